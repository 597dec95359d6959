// Gardener's machine-controller integration suite (MCM v0.62.1, pkg/test/integration/common)
// run against `mcm-wasm controller`, exactly as a provider repository runs it (provider-aws
// v0.28.0's test/integration/controller): these two files, the framework doing the rest.
//
// Started by runtime/cli/tests/gardener_suite.rs, which builds this package with `go test -c`,
// lays out the "provider repository" the framework expects around the binary (the GNUmakefile
// `start` targets, dev/mcm with Gardener's CRDs, .ci/controllers-test), and runs it on the
// project's control plane, moto and node simulation. The orphan tracker is tracker.go.
package controller_test

import (
	"testing"

	"github.com/gardener/machine-controller-manager/pkg/test/integration/common"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

func TestController(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Machine Controller Suite")
}

// The framework's timeout for every Eventually (seconds): provider-aws passes 300 for a real
// cloud; moto and simulated Nodes answer in seconds, and a failure should not wait 5 minutes.
var c = common.NewIntegrationTestFramework(&motoTracker{}, 120)

var _ = BeforeSuite(c.SetupBeforeSuite)

var _ = AfterSuite(c.Cleanup)

var _ = Describe("Machine controllers test", func() {
	c.BeforeEachCheck()
	c.ControllerTests()
})
