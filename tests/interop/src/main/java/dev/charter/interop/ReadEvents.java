package dev.charter.interop;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.stream.Collectors;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads Charter's topics from the beginning with the plain Kafka Java client and decodes every
 * value through Avro's single-object encoding, knowing only the .avsc files.
 *
 * <p>Usage: ReadEvents BOOTSTRAP SCHEMAS_DIR TOPIC...
 *
 * <p>Prints one JSON line per record: topic, partition, offset and either the schema, event id
 * and run id, or why it does not decode (a producer outside Charter may write garbage to a
 * topic; Charter dead-letters it, and so a reader must be able to skip it). Then a summary line.
 * Exits 1 if a record that decodes breaks the envelope's rules.
 *
 * <p>It reads until it is past the end offsets it saw at the start and a poll comes back empty:
 * some brokers (Tansu) report end offsets short of the real end.
 */
public final class ReadEvents {
  private static final byte[] MARKER = {(byte) 0xC3, (byte) 0x01};

  private ReadEvents() {}

  public static void main(String[] args) throws IOException {
    if (args.length < 3) {
      System.err.println("usage: ReadEvents BOOTSTRAP SCHEMAS_DIR TOPIC...");
      System.exit(2);
    }
    Map<Long, BinaryMessageDecoder<GenericRecord>> decoders = decoders(new File(args[1]));
    List<String> topics = Arrays.asList(args).subList(2, args.length);

    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

    Map<String, Integer> counts = new TreeMap<>();
    int problems = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props)) {
      List<TopicPartition> partitions = new ArrayList<>();
      for (String topic : topics) {
        for (PartitionInfo info : consumer.partitionsFor(topic)) {
          partitions.add(new TopicPartition(topic, info.partition()));
        }
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
      Map<TopicPartition, Long> ends = consumer.endOffsets(partitions);
      boolean quiet = false;
      while (!(quiet && caughtUp(consumer, ends))) {
        var batch = consumer.poll(Duration.ofMillis(500));
        quiet = batch.isEmpty();
        for (ConsumerRecord<byte[], byte[]> record : batch) {
          String problem = null;
          String line;
          GenericRecord event;
          try {
            event = decode(decoders, record.value());
          } catch (IllegalArgumentException | org.apache.avro.AvroRuntimeException e) {
            System.out.printf("{\"topic\":\"%s\",\"partition\":%d,\"offset\":%d,\"error\":\"%s\"}%n",
                record.topic(), record.partition(), record.offset(),
                (e.getClass().getSimpleName() + ": " + e.getMessage()).replace("\\", "/").replace("\"", "'"));
            counts.merge("(undecodable)", 1, Integer::sum);
            continue;
          }
          try {
            problem = check(event);
            GenericRecord envelope = (GenericRecord) event.get("envelope");
            String schema = event.getSchema().getName();
            counts.merge(schema, 1, Integer::sum);
            line = String.format(
                "{\"topic\":\"%s\",\"partition\":%d,\"offset\":%d,\"schema\":\"%s\",\"event_id\":\"%s\",\"run_id\":%s}",
                record.topic(), record.partition(), record.offset(), schema,
                envelope.get("event_id"), quoted(envelope.get("run_id")));
          } catch (RuntimeException e) {
            problem = e.getClass().getSimpleName() + ": " + e.getMessage();
            line = String.format("{\"topic\":\"%s\",\"partition\":%d,\"offset\":%d}",
                record.topic(), record.partition(), record.offset());
          }
          if (problem != null) {
            // A record that breaks the envelope's rules is named, not fatal: the caller checks
            // that Charter dead-lettered it too (tests put such records on the topics on purpose).
            line = line.substring(0, line.length() - 1) + ",\"problem\":\"" + problem.replace("\"", "'") + "\"}";
            problems++;
            System.err.printf("%s[%d]@%d: %s%n", record.topic(), record.partition(), record.offset(), problem);
          }
          System.out.println(line);
        }
      }
    }
    String summary = counts.entrySet().stream()
        .map(e -> "\"" + e.getKey() + "\":" + e.getValue())
        .collect(Collectors.joining(",", "{", "}"));
    System.out.println("{\"summary\":" + summary + ",\"problems\":" + problems + "}");
  }

  /** One decoder per writer schema, found by the fingerprint in each record's header. */
  static Map<Long, BinaryMessageDecoder<GenericRecord>> decoders(File dir) throws IOException {
    Schema.Parser parser = new Schema.Parser();
    File[] types = new File(dir, "types").listFiles((d, n) -> n.endsWith(".avsc"));
    File[] events = dir.listFiles((d, n) -> n.endsWith(".avsc"));
    if (types == null || events == null || events.length == 0) {
      throw new IOException("no .avsc files in " + dir);
    }
    Arrays.sort(types);
    Arrays.sort(events);
    for (File f : types) {
      parser.parse(f);
    }
    SchemaStore.Cache store = new SchemaStore.Cache();
    List<Schema> schemas = new ArrayList<>();
    for (File f : events) {
      Schema schema = parser.parse(f);
      store.addSchema(schema);
      schemas.add(schema);
    }
    Map<Long, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();
    for (Schema schema : schemas) {
      decoders.put(SchemaNormalization.parsingFingerprint64(schema),
          new BinaryMessageDecoder<>(GenericData.get(), schema, store));
    }
    return decoders;
  }

  static GenericRecord decode(Map<Long, BinaryMessageDecoder<GenericRecord>> decoders, byte[] value) {
    if (value == null || value.length < 10 || value[0] != MARKER[0] || value[1] != MARKER[1]) {
      throw new IllegalArgumentException("not an Avro single-object record");
    }
    long fingerprint = ByteBuffer.wrap(value, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
    BinaryMessageDecoder<GenericRecord> decoder = decoders.get(fingerprint);
    if (decoder == null) {
      throw new IllegalArgumentException("unknown fingerprint " + Long.toHexString(fingerprint));
    }
    try {
      return decoder.decode(value);
    } catch (IOException e) {
      throw new IllegalArgumentException(e.getMessage(), e);
    }
  }

  /** The envelope's rules: what every consumer may rely on. Null when they hold. */
  static String check(GenericRecord event) {
    GenericRecord envelope = (GenericRecord) event.get("envelope");
    String schema = event.getSchema().getName();
    if (!schema.equals(String.valueOf(envelope.get("event_type")))) {
      return "event_type " + envelope.get("event_type") + " but written by " + schema;
    }
    if (String.valueOf(envelope.get("event_id")).isEmpty()) {
      return "empty event_id";
    }
    if (((Integer) envelope.get("schema_version")) < 1) {
      return "schema_version < 1";
    }
    Object occurred = envelope.get("occurred_at");
    long micros = occurred instanceof java.time.Instant i
        ? i.getEpochSecond() * 1_000_000L + i.getNano() / 1000 : (Long) occurred;
    if (micros <= 0) {
      return "occurred_at not set";
    }
    if (String.valueOf(envelope.get("correlation_id")).isEmpty() || String.valueOf(envelope.get("tenant")).isEmpty()) {
      return "correlation_id or tenant empty";
    }
    boolean ownsARun = schema.startsWith("Run") || schema.startsWith("Action") || schema.startsWith("Approval");
    if (ownsARun && envelope.get("run_id") == null) {
      return schema + " without a run_id";
    }
    return null;
  }

  static boolean caughtUp(KafkaConsumer<byte[], byte[]> consumer, Map<TopicPartition, Long> ends) {
    for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
      if (consumer.position(end.getKey()) < end.getValue()) {
        return false;
      }
    }
    return true;
  }

  static String quoted(Object value) {
    return value == null ? "null" : "\"" + value + "\"";
  }
}
