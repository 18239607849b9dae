"""The one way every service consumes: fetch, hand records to the service, publish, commit.

    delivery.py  a record as it came off the broker
    keys.py      records queued by key: a key's records one at a time, in order; slots fair by tenant
    offsets.py   what a partition may commit: up to its lowest record not yet finished
    consumer.py  the loop: fetch (pausing when full), dispatch, publish and commit
    group.py     group commit: writes of records that finish together, made as one
    pipeline.py  one record through a service: decode, trace, handle, retry, dead-letter
    service.py   the process around it: settings, producer, consumer, metrics, stop

A service declares how it consumes (`Parts.mode`): `ordered`, a batch at a time in fetch order
(policy, approvals, audit: exact budgets and a hash chain want one order), or `keyed`, records
of different keys (runs) concurrently and one key's in order (planner, executor: their records
wait on a model or a tool, and no run may wait behind another's). A handler that must wait on
the world outside returns a `Later`, the rest of its work, which the runtime runs apart from the
batch; the record is finished, and its offset committable, once that is done and its outputs are
on the broker.
"""
