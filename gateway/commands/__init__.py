"""Commands from upstream: the MQTT protocol (:mod:`.protocol`), the service that checks, runs, answers and
audits them (:mod:`.service`), and the one-shot client of ``edgegw cmd`` (:mod:`.client`)."""
