"""Stream processors (faust-streaming): events -> suppressions and daily counters.

`rules` decides from one event and an address's soft-failure state what to do (no Kafka);
`app` wires the rules into faust agents and tables; `service` is `mailsluice streams`.
"""
