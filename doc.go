// Package ferry is the vocabulary every part of Ferry shares: the names of
// protected VMs and their disks, the sequence numbers of a replication
// stream, the epoch that fences an old replication direction, recovery
// points and their consistency, and the operator's choices that travel
// between the servers and their clients (failback location, when a
// failback synchronizes, named points, job outcomes).
//
// A block travels one way: the agent (agent/) captures it in its write
// splitter (pkg/cbt) and streams it over gRPC (pkg/wire) to a process
// server (processserver/), whose ingest (pkg/ingest) checks it and appends
// it to a bbolt journal (pkg/journal) that turns markers into recovery
// points under a retention policy (pkg/retention). Failover brings a VM up
// from a point; reprotect and failback run the same path in reverse
// through a master target (mastertarget/). The simulator (sim/) drives
// drills of the whole cycle against ground truth; bench/ measures it.
//
// This package imports nothing of Ferry's: every other package may use it.
package ferry
