"""Test infrastructure: a real Kafka broker, a loopback DNS server, scriptable remote MXes."""
