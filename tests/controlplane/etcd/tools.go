//go:build tools

// Package etcd pins the etcd server the cluster suite stores the API server's data in.
package etcd

import _ "go.etcd.io/etcd/server/v3"
