"""History checkers: linearizability (Wing & Gong search with memoisation, as
in Porcupine) over models of the services PrismFS replicates."""
