"""Kafka plumbing every process shares: clients configured the one way the project uses them,
topic administration, the offset ledger, compacted-topic readers and retrying until Kafka
answers.
"""
