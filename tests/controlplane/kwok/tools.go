//go:build tools

// Package kwok pins kwok, which keeps the suite's fake Nodes alive and runs their pods.
package kwok

import _ "sigs.k8s.io/kwok/cmd/kwok"
