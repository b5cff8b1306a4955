package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// documentSeparator splits a multi-document YAML file.
var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// newObject returns an empty object of the API type of a document.
func newObject(tm metav1.TypeMeta) (any, error) {
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "batch/v1 Job":
		return &batchv1.Job{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q is not a type this test decodes", tm.APIVersion, tm.Kind)
}

// decodeManifests decodes every document of a multi-document YAML file
// into its Kubernetes API type, strictly: a field the type does not have,
// spelt in any case, a duplicate key or a value of the wrong type is an
// error. Documents with nothing but comments are skipped.
func decodeManifests(data []byte) ([]any, error) {
	var out []any
	for i, doc := range documentSeparator.Split(string(data), -1) {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: converting YAML to JSON: %w", i+1, err)
		}
		if string(j) == "null" {
			continue
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(j, &tm); err != nil {
			return nil, fmt.Errorf("document %d: reading apiVersion and kind: %w", i+1, err)
		}
		obj, err := newObject(tm)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		// encoding/json matches field names regardless of case, the API
		// server does not: every key given must come back, spelt the
		// same, when the decoded object is encoded again.
		back, err := json.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): encoding again: %w", i+1, tm.Kind, err)
		}
		var given, kept any
		if err := json.Unmarshal(j, &given); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(back, &kept); err != nil {
			return nil, err
		}
		if err := sameKeys(given, kept, ""); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		out = append(out, obj)
	}
	return out, nil
}

// sameKeys reports the first key of given, at any depth, that kept lacks.
func sameKeys(given, kept any, path string) error {
	switch g := given.(type) {
	case map[string]any:
		k, _ := kept.(map[string]any)
		for key, v := range g {
			kv, ok := k[key]
			if !ok {
				return fmt.Errorf("field %s%s is not a field of the API type (a misspelling, or the wrong case)", path, key)
			}
			if err := sameKeys(v, kv, path+key+"."); err != nil {
				return err
			}
		}
	case []any:
		k, _ := kept.([]any)
		if len(k) != len(g) {
			return fmt.Errorf("list %s has %d entries, %d after decoding", strings.TrimSuffix(path, "."), len(g), len(k))
		}
		for i := range g {
			if err := sameKeys(g[i], k[i], fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// load decodes one example file.
func load(t *testing.T, name string) []any {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests(data)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return objs
}

// only returns the one object of type T in objs.
func only[T any](t *testing.T, objs []any) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if v, ok := o.(T); ok {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("%d objects of type %T, want 1", len(found), zero)
	}
	return found[0]
}

func TestManifestsDecodeStrictly(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"deployment.yaml": "*v1.Deployment", "job.yaml": "*v1.Job"}
	for name := range want {
		if !slices.Contains(files, name) {
			t.Errorf("%s is missing", name)
		}
	}
	for _, f := range files {
		objs := load(t, f)
		var kinds []string
		for _, o := range objs {
			kinds = append(kinds, reflect.TypeOf(o).String())
		}
		if w, ok := want[f]; ok && !slices.Contains(kinds, w) {
			t.Errorf("%s holds %v, want a %s", f, kinds, w)
		}
		if len(objs) == 0 {
			t.Errorf("%s holds no object", f)
		}
	}
}

// TestMisspelledFieldsFail proves the decoding strict: each edit of a copy
// of an example (of the first occurrence of old) must be refused.
func TestMisspelledFieldsFail(t *testing.T) {
	tests := []struct {
		file, old, new, want string
	}{
		{"deployment.yaml", "  restartPolicy: Always", "  restartPolcy: Always", `unknown field "restartPolcy"`},
		{"deployment.yaml", "  restartPolicy: Always", "  RestartPolicy: Always", "RestartPolicy is not a field"},
		{"deployment.yaml", "      initContainers:", "      initContainer:", `unknown field "initContainer"`},
		{"deployment.yaml", "startupProbe:", "startUpProbe:", "startUpProbe is not a field"},
		{"deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true", "readOnlyRootFileSystem is not a field"},
		{"deployment.yaml", "containerPort: 9543", `containerPort: "9543"`, "cannot unmarshal string"},
		{"deployment.yaml", "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", "already set in map"},
		{"deployment.yaml", "apiVersion: apps/v1", "apiVersion: apps/v1beta1", "is not a type this test decodes"},
		{"job.yaml", "postStart:", "postStrat:", `unknown field "postStrat"`},
		{"job.yaml", "activeDeadlineSeconds:", "activeDeadlineSecs:", `unknown field "activeDeadlineSecs"`},
		{"job.yaml", "      restartPolicy: Never", "      restartPolicy: Never\n      restartpolicy: Never", "restartpolicy"},
	}
	for _, tc := range tests {
		t.Run(tc.file+" "+strings.Join(strings.Fields(tc.new), " "), func(t *testing.T) {
			data, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(data), tc.old) {
				t.Fatalf("%q is not in %s", tc.old, tc.file)
			}
			bad := strings.Replace(string(data), tc.old, tc.new, 1)
			_, err = decodeManifests([]byte(bad))
			if err == nil {
				t.Fatalf("the edited copy decodes: %q -> %q", tc.old, tc.new)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

func TestMultiDocumentFiles(t *testing.T) {
	data := []byte("# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v\n---\n" +
		"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n--- \n")
	objs, err := decodeManifests(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].(*corev1.ConfigMap).Data["k"] != "v" || objs[1].(*corev1.ConfigMap).Name != "b" {
		t.Errorf("decoded %+v", objs)
	}
	bad := bytes.Replace(data, []byte("  name: b"), []byte("  nmae: b"), 1)
	if _, err := decodeManifests(bad); err == nil || !strings.Contains(err.Error(), "document 3") {
		t.Errorf("a misspelling in the third document: %v", err)
	}
}

// container returns the container called name.
func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %q", name)
	return corev1.Container{}
}

// env returns the literal value of a container's variable, "" when unset.
func env(t *testing.T, c corev1.Container, name string) string {
	t.Helper()
	for _, e := range c.Env {
		if e.Name == name {
			if e.ValueFrom != nil {
				t.Fatalf("%s of %s comes from elsewhere", name, c.Name)
			}
			return e.Value
		}
	}
	return ""
}

// hostPort splits a HOST:PORT setting.
func hostPort(t *testing.T, what, s string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s %q: %v", what, s, err)
	}
	return h, n
}

// proxyImage is the form of the proxy's image: a registry path ending in
// pgverifyproxy, with a tag other than latest.
var proxyImage = regexp.MustCompile(`^[a-z0-9.-]+(:[0-9]+)?/([a-z0-9._-]+/)*pgverifyproxy:[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// checkProxy checks what both examples need of the proxy's container:
// image, loopback listener, pins in a subdirectory of a writable volume,
// and an unprivileged, read-only container. It returns the listen port.
func checkProxy(t *testing.T, spec corev1.PodSpec, c corev1.Container) int {
	t.Helper()
	if !proxyImage.MatchString(c.Image) || strings.HasSuffix(c.Image, ":latest") {
		t.Errorf("proxy image %q: want REGISTRY/.../pgverifyproxy:TAG", c.Image)
	}
	if len(c.Command) != 0 {
		t.Errorf("proxy command %v: the image's entrypoint is /pgverifyproxy", c.Command)
	}
	if env(t, c, "PGVERIFYPROXY_UPSTREAM") == "" {
		t.Error("no PGVERIFYPROXY_UPSTREAM")
	}
	host, port := hostPort(t, "PGVERIFYPROXY_LISTEN", env(t, c, "PGVERIFYPROXY_LISTEN"))
	if host != "127.0.0.1" {
		t.Errorf("the proxy listens on %s, want the Pod's loopback 127.0.0.1", host)
	}

	// The pins: a subdirectory of a writable volume mount.
	pinDir := env(t, c, "PGVERIFYPROXY_PIN_DIR")
	var mount *corev1.VolumeMount
	for i, m := range c.VolumeMounts {
		if rel, err := filepath.Rel(m.MountPath, pinDir); err == nil && !strings.HasPrefix(rel, "..") {
			mount = &c.VolumeMounts[i]
			if rel == "." {
				t.Errorf("pin_dir %s is the volume's root, which Kubernetes makes group- or world-writable and the proxy refuses: use a subdirectory", pinDir)
			}
		}
	}
	if mount == nil {
		t.Fatalf("pin_dir %q is on no volume mount (the root file system is read-only)", pinDir)
	}
	if mount.ReadOnly {
		t.Errorf("the pin volume is mounted read-only")
	}
	var vol *corev1.Volume
	for i, v := range spec.Volumes {
		if v.Name == mount.Name {
			vol = &spec.Volumes[i]
		}
	}
	if vol == nil || vol.EmptyDir == nil {
		t.Errorf("the pin volume %q is not an emptyDir of the Pod: %+v", mount.Name, vol)
	}

	sc := c.SecurityContext
	if sc == nil {
		t.Fatal("no securityContext on the proxy")
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("proxy runAsUser %v, want the image's 65532", sc.RunAsUser)
	}
	checkLockedDown(t, spec, c)
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds <= 30 {
		t.Errorf("terminationGracePeriodSeconds %v: must be above drain_timeout (30s)", spec.TerminationGracePeriodSeconds)
	}
	return port
}

// checkLockedDown checks that a container runs as a non-root user with no
// privileges and a read-only root file system.
func checkLockedDown(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("the Pod does not set runAsNonRoot")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("the Pod has no RuntimeDefault seccomp profile")
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Fatalf("%s: no securityContext", c.Name)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
		t.Errorf("%s: runAsUser %v, want a non-root user", c.Name, sc.RunAsUser)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation not false", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: root file system not read-only", c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities %+v, want all dropped", c.Name, sc.Capabilities)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", c.Name)
	}
}

// checkClient checks the app's libpq settings: the proxy on the Pod's
// loopback, plaintext or require.
func checkClient(t *testing.T, c corev1.Container, listenPort int) {
	t.Helper()
	if c.Image != "postgres:15" {
		t.Errorf("%s image %q, want postgres:15 (the stand-in for a legacy client)", c.Name, c.Image)
	}
	if h := env(t, c, "PGHOST"); h != "127.0.0.1" {
		t.Errorf("%s connects to PGHOST %q, want 127.0.0.1", c.Name, h)
	}
	if p := env(t, c, "PGPORT"); p != strconv.Itoa(listenPort) {
		t.Errorf("%s PGPORT %q, the proxy listens on %d", c.Name, p, listenPort)
	}
	if m := env(t, c, "PGSSLMODE"); m != "disable" && m != "require" {
		t.Errorf("%s PGSSLMODE %q, want disable or require", c.Name, m)
	}
	for _, e := range c.Env {
		if e.Name == "PGPASSWORD" && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			t.Errorf("%s: PGPASSWORD is not from a Secret", c.Name)
		}
	}
}

// probePort resolves a probe's port, by number or by the container's
// port name.
func probePort(t *testing.T, c corev1.Container, port intstr.IntOrString) int {
	t.Helper()
	if port.Type == intstr.Int {
		return port.IntValue()
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort)
		}
	}
	t.Fatalf("probe port %q is not a port of %s", port.StrVal, c.Name)
	return 0
}

func TestDeploymentNativeSidecar(t *testing.T) {
	d := only[*appsv1.Deployment](t, load(t, "deployment.yaml"))
	spec := d.Spec.Template.Spec
	if d.Spec.Selector == nil || !reflect.DeepEqual(d.Spec.Selector.MatchLabels, d.Spec.Template.Labels) {
		t.Errorf("selector %v does not match the template's labels %v", d.Spec.Selector, d.Spec.Template.Labels)
	}

	// The sidecar: an init container that keeps running.
	proxy := container(t, spec.InitContainers, "pgverifyproxy")
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("the proxy's restartPolicy is %v, want Always (a native sidecar)", proxy.RestartPolicy)
	}
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "app" {
		t.Errorf("containers %v, want the app alone", spec.Containers)
	}
	listenPort := checkProxy(t, spec, proxy)
	checkClient(t, container(t, spec.Containers, "app"), listenPort)
	checkLockedDown(t, spec, container(t, spec.Containers, "app"))

	// Probes: /readyz on the admin port, which must listen where the
	// kubelet's probes arrive (the Pod's IP, not its loopback).
	adminHost, adminPort := hostPort(t, "PGVERIFYPROXY_ADMIN", env(t, proxy, "PGVERIFYPROXY_ADMIN"))
	if adminHost != "0.0.0.0" && adminHost != "::" && adminHost != "" {
		t.Errorf("admin on %q: the kubelet's httpGet probes do not reach the Pod's loopback", adminHost)
	}
	if env(t, proxy, "PGVERIFYPROXY_ADMIN_QUIT") != "" {
		t.Error("admin_quit in the Deployment: a native sidecar that quits is restarted, and the admin port is reachable from outside the Pod")
	}
	for name, p := range map[string]*corev1.Probe{"startupProbe": proxy.StartupProbe, "readinessProbe": proxy.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s: want an httpGet probe", name)
			continue
		}
		if p.HTTPGet.Path != "/readyz" {
			t.Errorf("%s path %q, want /readyz", name, p.HTTPGet.Path)
		}
		if port := probePort(t, proxy, p.HTTPGet.Port); port != adminPort {
			t.Errorf("%s on port %d, the admin endpoint is on %d", name, port, adminPort)
		}
		if p.HTTPGet.Host != "" || (p.HTTPGet.Scheme != "" && p.HTTPGet.Scheme != corev1.URISchemeHTTP) {
			t.Errorf("%s: host %q scheme %q, want the Pod's IP over HTTP", name, p.HTTPGet.Host, p.HTTPGet.Scheme)
		}
		if p.TimeoutSeconds < 2 {
			t.Errorf("%s timeoutSeconds %d", name, p.TimeoutSeconds)
		}
	}
	if p := proxy.StartupProbe; p != nil && p.PeriodSeconds*p.FailureThreshold < 60 {
		t.Errorf("the startupProbe gives up after %ds: pinning and verifying may take longer", p.PeriodSeconds*p.FailureThreshold)
	}
	if p := proxy.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path == "/readyz" {
		t.Error("livenessProbe on /readyz: an unreachable database would restart the proxy for nothing")
	}
}

// jobTask returns the Job, its task container and the task's shell script.
func jobTask(t *testing.T) (batch *batchv1.Job, task corev1.Container, script string) {
	t.Helper()
	j := only[*batchv1.Job](t, load(t, "job.yaml"))
	spec := j.Spec.Template.Spec
	if len(spec.Containers) != 2 {
		t.Fatalf("%d containers, want the proxy and the task", len(spec.Containers))
	}
	task = spec.Containers[1]
	if !reflect.DeepEqual(task.Command, []string{"/bin/bash", "-c"}) || len(task.Args) != 1 {
		t.Fatalf("task command %q args %q: want /bin/bash -c SCRIPT", task.Command, task.Args)
	}
	return j, task, task.Args[0]
}

func TestJobQuitsTheProxy(t *testing.T) {
	j, task, script := jobTask(t)
	spec := j.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("restartPolicy %q, want Never", spec.RestartPolicy)
	}
	if j.Spec.ActiveDeadlineSeconds == nil {
		t.Error("no activeDeadlineSeconds: a task killed before its quit call would leave the Job running")
	}
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			t.Errorf("native sidecar %s in the Job: the kubelet would restart it after /quitquitquit", c.Name)
		}
	}

	// The proxy comes first; its postStart hook waits until it is ready,
	// which holds back the task.
	proxy := spec.Containers[0]
	if proxy.Name != "pgverifyproxy" {
		t.Fatalf("first container %q, want pgverifyproxy (its postStart hook holds back the ones after it)", proxy.Name)
	}
	listenPort := checkProxy(t, spec, proxy)
	checkClient(t, task, listenPort)
	checkLockedDown(t, spec, task)
	if proxy.Lifecycle == nil || proxy.Lifecycle.PostStart == nil || proxy.Lifecycle.PostStart.Exec == nil {
		t.Fatal("no postStart exec hook on the proxy")
	}
	hook := proxy.Lifecycle.PostStart.Exec.Command
	if len(hook) < 2 || hook[0] != "/pgverifyproxy" || hook[1] != "wait" || !slices.Contains(hook, "--timeout") {
		t.Errorf("postStart %q, want /pgverifyproxy wait --timeout D", hook)
	}

	adminHost, adminPort := hostPort(t, "PGVERIFYPROXY_ADMIN", env(t, proxy, "PGVERIFYPROXY_ADMIN"))
	if adminHost != "127.0.0.1" {
		t.Errorf("admin on %q with admin_quit: want the Pod's loopback, so only its containers can stop the proxy", adminHost)
	}
	if q := env(t, proxy, "PGVERIFYPROXY_ADMIN_QUIT"); q != "true" {
		t.Errorf("PGVERIFYPROXY_ADMIN_QUIT %q, want true", q)
	}

	// The task ends the proxy: POST /quitquitquit on the admin port, from
	// an EXIT trap so that it happens whatever the task's outcome.
	for _, want := range []string{
		fmt.Sprintf("/dev/tcp/127.0.0.1/%d", adminPort),
		"POST /quitquitquit HTTP/1.1\\r\\n",
		fmt.Sprintf("Host: 127.0.0.1:%d", adminPort),
		"Content-Length: 0",
		"trap quit_proxy EXIT",
	} {
		if !strings.Contains(script, want) {
			t.Errorf("the task's script lacks %q:\n%s", want, script)
		}
	}
}

// fakeAdmin is an admin endpoint that records the requests it gets and
// answers POST /quitquitquit like the proxy.
type fakeAdmin struct {
	mu   sync.Mutex
	reqs []string
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, fmt.Sprintf("%s %s host=%s length=%d", r.Method, r.URL.Path, r.Host, r.ContentLength))
	f.mu.Unlock()
	if r.Method != http.MethodPost || r.URL.Path != "/quitquitquit" {
		http.Error(w, "unexpected", http.StatusBadRequest)
		return
	}
	fmt.Fprint(w, "draining\n")
}

func (f *fakeAdmin) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// TestJobQuitScript runs the task's script with bash, psql replaced by a
// stub, against a stand-in admin endpoint: one well-formed POST
// /quitquitquit after the work, whether it succeeded or failed, and the
// work's exit status kept.
func TestJobQuitScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatalf("bash not found: the task's script needs it: %v", err)
	}
	_, _, script := jobTask(t)
	stubs := t.TempDir()
	if err := os.WriteFile(filepath.Join(stubs, "psql"), []byte("#!/bin/sh\necho \"psql $*\"\nexit \"$STUB_PSQL_EXIT\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	run := func(t *testing.T, port string, psqlExit int) (string, int) {
		t.Helper()
		s := strings.ReplaceAll(script, "9543", port)
		cmd := exec.Command(bash, "-c", s)
		cmd.Env = append(os.Environ(), "PATH="+stubs+":"+os.Getenv("PATH"), "STUB_PSQL_EXIT="+strconv.Itoa(psqlExit))
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}

	for _, psqlExit := range []int{0, 3} {
		t.Run(fmt.Sprintf("psql exits %d", psqlExit), func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fake := &fakeAdmin{}
			srv := &http.Server{Handler: fake}
			go srv.Serve(l)
			t.Cleanup(func() { srv.Close() })
			_, port, _ := net.SplitHostPort(l.Addr().String())

			out, code := run(t, port, psqlExit)
			if code != psqlExit {
				t.Errorf("the script exits %d, psql %d\n%s", code, psqlExit, out)
			}
			if !strings.Contains(out, "psql -X -v ON_ERROR_STOP=1 -c") {
				t.Errorf("psql did not run:\n%s", out)
			}
			want := []string{"POST /quitquitquit host=127.0.0.1:" + port + " length=0"}
			if got := fake.got(); !reflect.DeepEqual(got, want) {
				t.Errorf("admin endpoint got %q, want %q", got, want)
			}
			if !strings.Contains(out, "pgverifyproxy: HTTP/1.1 200 OK\n") {
				t.Errorf("the script does not show the answer:\n%s", out)
			}
		})
	}

	t.Run("proxy already gone", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(l.Addr().String())
		l.Close()
		out, code := run(t, port, 0)
		if code != 0 {
			t.Errorf("the script exits %d when the proxy is gone already, want the task's 0\n%s", code, out)
		}
	})
}

// TestProxySettingsExist checks every PGVERIFYPROXY_* variable of the
// examples against the settings documented in config.example.yaml, so a
// misspelt variable (which the proxy would ignore) fails here.
func TestProxySettingsExist(t *testing.T) {
	example, err := os.ReadFile(filepath.Join("..", "..", "config.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"deployment.yaml", "job.yaml"} {
		for _, o := range load(t, f) {
			var spec corev1.PodSpec
			switch v := o.(type) {
			case *appsv1.Deployment:
				spec = v.Spec.Template.Spec
			case *batchv1.Job:
				spec = v.Spec.Template.Spec
			default:
				continue
			}
			for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
				for _, e := range c.Env {
					key, ok := strings.CutPrefix(e.Name, "PGVERIFYPROXY_")
					if !ok {
						continue
					}
					if !bytes.Contains(example, []byte("\n"+strings.ToLower(key)+":")) {
						t.Errorf("%s: %s sets %s, which is no setting of config.example.yaml", f, c.Name, e.Name)
					}
				}
			}
		}
	}
}
