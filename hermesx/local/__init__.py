"""Local clusters on one machine: ZooKeeper, storesites and nodes as child processes."""
