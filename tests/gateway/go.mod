// Module context for build.sh: `go mod download` of the pinned Envoy Gateway release runs here.
module finetune-operator/gateway

go 1.26.7
