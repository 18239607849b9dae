"""Charter's five services. Each is a pure `decide` plus a thin Kafka adapter in `service.py`."""
