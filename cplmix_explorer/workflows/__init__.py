"""What the front ends run: training runs in folders (``run``), training and pruning in a child process
(``worker``), consensus pruning (``pruning``) and the throughput benchmark (``bench``)."""
