"""Kafka plumbing every process shares: clients configured the one way the project uses them
(clients), topic administration (admin), the offset ledger (ledger), the one compacted-view
reader (compacted) and the one loop that retries until Kafka answers (retrying).
"""
