package controller_test

// The orphan tracker of the suite (helpers.ResourcesTrackerInterface). provider-aws keeps its
// AWS tracker in its own repository, which the Go module proxy does not serve; this one asks
// the same questions of moto and of the provider itself:
//   - EC2 instances (pending/running/stopping/stopped) carrying the class's cluster tag;
//   - EBS volumes in state `available` carrying it (a VM's disks left behind);
//   - the provider's list-machines for the class (`mcm-wasm call`, the component in the sandbox).
// Initialization fails when any of them exists already (a run must start from a fresh moto), so
// spec 10 ("no orphans") can only pass when the controller cleaned up after every machine.

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"

	v1alpha1 "github.com/gardener/machine-controller-manager/pkg/apis/machine/v1alpha1"
)

type motoTracker struct {
	clusterTag string
	region     string
	class      *v1alpha1.MachineClass
	secret     map[string][]byte
}

func (t *motoTracker) InitializeResourcesTracker(class *v1alpha1.MachineClass, secret map[string][]byte, _ string) error {
	var spec struct {
		Region string            `json:"region"`
		Tags   map[string]string `json:"tags"`
	}
	if err := json.Unmarshal(class.ProviderSpec.Raw, &spec); err != nil {
		return fmt.Errorf("tracker: providerSpec of %s: %w", class.Name, err)
	}
	for k := range spec.Tags {
		if strings.HasPrefix(k, "kubernetes.io/cluster/") {
			t.clusterTag = k
		}
	}
	if t.clusterTag == "" {
		return fmt.Errorf("tracker: class %s has no kubernetes.io/cluster/ tag", class.Name)
	}
	t.region, t.class, t.secret = spec.Region, class, secret
	if found := t.orphans(); len(found) > 0 {
		return fmt.Errorf("tracker: resources exist before the suite started: %v", found)
	}
	log.Printf("tracker: watching instances, volumes and list-machines tagged %s", t.clusterTag)
	return nil
}

func (t *motoTracker) IsOrphanedResourcesAvailable() bool {
	found := t.orphans()
	for _, f := range found {
		log.Printf("tracker: orphan %s", f)
	}
	return len(found) > 0
}

// orphans lists what exists for the class; a question that cannot be answered counts as an
// orphan (never "no orphans" by default).
func (t *motoTracker) orphans() []string {
	var found []string
	var instances struct {
		Items []struct {
			ID    string `xml:"instanceId"`
			State string `xml:"instanceState>name"`
		} `xml:"reservationSet>item>instancesSet>item"`
	}
	if err := t.ec2("DescribeInstances", url.Values{
		"Filter.1.Name": {"tag-key"}, "Filter.1.Value.1": {t.clusterTag},
		"Filter.2.Name": {"instance-state-name"}, "Filter.2.Value.1": {"pending"},
		"Filter.2.Value.2": {"running"}, "Filter.2.Value.3": {"stopping"}, "Filter.2.Value.4": {"stopped"},
	}, &instances); err != nil {
		found = append(found, err.Error())
	}
	for _, i := range instances.Items {
		found = append(found, fmt.Sprintf("instance %s (%s)", i.ID, i.State))
	}
	var volumes struct {
		Items []struct {
			ID string `xml:"volumeId"`
		} `xml:"volumeSet>item"`
	}
	if err := t.ec2("DescribeVolumes", url.Values{
		"Filter.1.Name": {"tag-key"}, "Filter.1.Value.1": {t.clusterTag},
		"Filter.2.Name": {"status"}, "Filter.2.Value.1": {"available"},
	}, &volumes); err != nil {
		found = append(found, err.Error())
	}
	for _, v := range volumes.Items {
		found = append(found, "volume "+v.ID)
	}
	machines, err := t.listMachines()
	if err != nil {
		found = append(found, err.Error())
	}
	for id, name := range machines {
		found = append(found, fmt.Sprintf("list-machines: %s (%s)", id, name))
	}
	return found
}

// ec2 calls moto's EC2 query API (MOTO_ENDPOINT); moto reads the region from the credential
// scope and does not check signatures.
func (t *motoTracker) ec2(action string, params url.Values, out any) error {
	params.Set("Action", action)
	params.Set("Version", "2016-11-15")
	req, err := http.NewRequest("POST", os.Getenv("MOTO_ENDPOINT")+"/", strings.NewReader(params.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("content-type", "application/x-www-form-urlencoded")
	req.Header.Set("authorization", fmt.Sprintf(
		"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/%s/ec2/aws4_request, SignedHeaders=host, Signature=00", t.region))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("tracker: %s: %w", action, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("tracker: %s answered %d: %s", action, resp.StatusCode, body)
	}
	return xml.Unmarshal(body, out)
}

// listMachines asks the provider (the AWS component in the sandbox, through `mcm-wasm call`)
// for every VM of the class, as the controller's orphan collection does.
func (t *motoTracker) listMachines() (map[string]string, error) {
	secret := []string{}
	for k, v := range t.secret {
		if k != "userData" {
			secret = append(secret, "--secret", k+"="+string(v))
		}
	}
	request, _ := json.Marshal(map[string]any{
		"machineClass": map[string]any{
			"name": t.class.Name, "provider": t.class.Provider, "providerSpec": json.RawMessage(t.class.ProviderSpec.Raw),
		},
	})
	endpoint := os.Getenv("MOTO_ENDPOINT")
	args := append([]string{"call", os.Getenv("AWS_PROVIDER_WASM"), "list-machines", "--request", string(request),
		"--config", fmt.Sprintf(`{"endpoint": %q}`, endpoint),
		"--allow-host", strings.TrimPrefix(endpoint, "http://")}, secret...)
	out, err := exec.Command(os.Getenv("MCM_WASM"), args...).Output()
	if err != nil {
		stderr := ""
		if e, ok := err.(*exec.ExitError); ok {
			stderr = string(e.Stderr)
		}
		return nil, fmt.Errorf("tracker: mcm-wasm call list-machines: %v: %s", err, stderr)
	}
	var answer struct {
		Machines map[string]string `json:"machines"`
	}
	if err := json.Unmarshal(out, &answer); err != nil {
		return nil, fmt.Errorf("tracker: list-machines answered %q: %w", out, err)
	}
	return answer.Machines, nil
}
