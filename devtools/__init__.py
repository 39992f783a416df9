"""Tools for trying leadscore on one machine and for its tests and benchmark: the event simulator, local
redis-server and Kafka-protocol broker processes, and the `leadscore dev` stack. Not part of the service."""
