"""Getting events upstream without losing one: the durable buffer, the payload format, the forwarder.

::

    buffer.py     SQLite (WAL) buffer: append (group commit), read, ack, the byte cap, storage faults
    salvage.py    reading what a damaged buffer file still holds (edgegw buffer export on a moved file)
    payload.py    the upstream JSON of one event
    forwarder.py  reads from the buffer, publishes with QoS 1 in a window, deletes what the broker acked
    mqtt.py       the MQTT connection (paho driven from the asyncio loop)
"""
