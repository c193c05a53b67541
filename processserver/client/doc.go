// Package client is what an operator's tools (ferryctl, the simulator,
// the bench) use of a process server beyond plain gRPC calls: exporting a
// recovery point's disk with every chunk checked, and following a job
// until it ends or waits for an operator. It links neither the server nor
// its storage.
package client
