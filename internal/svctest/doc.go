// Package svctest starts the real programs Ferry's tests talk to (an S3
// server, etcd, Ferry's own binaries) as child processes on loopback, and
// finds the tools they need. It imports nothing of Ferry's, so that the
// tests of any package can use it; ferrytest re-exports it beside its
// process-server helpers.
package svctest
