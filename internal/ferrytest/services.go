package ferrytest

import "github.com/ferrydr/ferry/internal/svctest"

// The real programs tests run (see internal/svctest).
type (
	Proc = svctest.Proc
	S3   = svctest.S3
	Etcd = svctest.Etcd
)

var (
	BuildBinaries  = svctest.BuildBinaries
	NeedNBDClients = svctest.NeedNBDClients
	Run            = svctest.Run
	FreeAddr       = svctest.FreeAddr
	Start          = svctest.Start
	Need           = svctest.Need
	Versitygw      = svctest.Versitygw
	StartS3        = svctest.StartS3
	StartEtcd      = svctest.StartEtcd
)
