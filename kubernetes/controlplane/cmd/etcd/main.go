// etcd, built from go.etcd.io/etcd/server/v3 at the version Kubernetes' go.mod names.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
