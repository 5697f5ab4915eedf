package main

// The backend's tests run against a real PostgreSQL: RUNAI_TEST_DATABASE (a connection string for a role
// that may create databases) or, without it, a throwaway cluster that TestMain makes with the server
// programs of Debian's postgresql package (initdb, pg_ctl; as user postgres when run as root). Each test
// gets a database of its own.

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	osuser "os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testDatabase is the connection string of the test role, without dbname; "" when there is no server.
var (
	testDatabase    string
	testDatabaseWhy string
)

func TestMain(m *testing.M) {
	code := func() int {
		if dsn := os.Getenv("RUNAI_TEST_DATABASE"); dsn != "" {
			testDatabase = dsn
			return m.Run()
		}
		stop, err := startThrowawayCluster()
		if err != nil {
			testDatabaseWhy = err.Error()
		}
		defer stop()
		return m.Run()
	}()
	os.Exit(code)
}

// serverPrograms is the directory of initdb and pg_ctl: PG_BINDIR, Debian's newest
// /usr/lib/postgresql/N/bin, or PATH.
func serverPrograms() (string, error) {
	if dir := os.Getenv("PG_BINDIR"); dir != "" {
		return dir, nil
	}
	found, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(found, func(i, j int) bool {
		major := func(path string) int {
			n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
			return n
		}
		return major(found[i]) < major(found[j])
	})
	if len(found) > 0 {
		return filepath.Dir(found[len(found)-1]), nil
	}
	if path, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(path), nil
	}
	return "", fmt.Errorf("no PostgreSQL server programs (initdb): run `make setup` (Debian's postgresql-15)")
}

// startThrowawayCluster runs a cluster in a temporary directory on a free port of 127.0.0.1, with role
// runai_test (password, scram-sha-256 over TCP) allowed to create databases; stop removes it all.
func startThrowawayCluster() (func(), error) {
	nothing := func() {}
	bindir, err := serverPrograms()
	if err != nil {
		return nothing, err
	}
	dir, err := os.MkdirTemp("", "runai-synthetic-pg-")
	if err != nil {
		return nothing, err
	}
	removeDir := func() { _ = os.RemoveAll(dir) }
	var asPostgres []string // postgres refuses to run as root
	if os.Geteuid() == 0 {
		account, err := osuser.Lookup("postgres")
		if err != nil {
			removeDir()
			return nothing, fmt.Errorf("running as root and there is no user postgres to run the server as: %w", err)
		}
		uid, _ := strconv.Atoi(account.Uid)
		gid, _ := strconv.Atoi(account.Gid)
		if err := os.Chmod(dir, 0o755); err != nil {
			removeDir()
			return nothing, err
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			removeDir()
			return nothing, err
		}
		asPostgres = []string{"runuser", "-u", "postgres", "--"}
	}
	run := func(program string, args ...string) error {
		command := append(append([]string{}, asPostgres...), filepath.Join(bindir, program))
		output, err := exec.Command(command[0], append(command[1:], args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v: %s", program, err, strings.TrimSpace(string(output)))
		}
		return nil
	}
	data := filepath.Join(dir, "data")
	if err := run("initdb", "--pgdata="+data, "--username=postgres", "--auth-local=trust",
		"--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		removeDir()
		return nothing, err
	}
	port, err := freePort()
	if err != nil {
		removeDir()
		return nothing, err
	}
	options := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=off",
		port, dir)
	if err := run("pg_ctl", "--pgdata="+data, "--log="+filepath.Join(dir, "server.log"), "--wait",
		"--options="+options, "start"); err != nil {
		removeDir()
		return nothing, err
	}
	stop := func() {
		_ = run("pg_ctl", "--pgdata="+data, "--mode=immediate", "--wait", "stop")
		removeDir()
	}
	admin, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable",
		dir, port))
	if err != nil {
		stop()
		return nothing, err
	}
	defer admin.Close()
	password := randomHex(12)
	if _, err := admin.Exec(`CREATE ROLE runai_test LOGIN CREATEDB PASSWORD '` + password + `'`); err != nil {
		stop()
		return nothing, err
	}
	testDatabase = fmt.Sprintf("host=127.0.0.1 port=%d user=runai_test password=%s sslmode=disable", port, password)
	return stop, nil
}

func freePort() (int, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer listener.Close()
	return listener.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	raw := make([]byte, n)
	if _, err := rand.Read(raw); err != nil {
		panic(err)
	}
	return hex.EncodeToString(raw)
}

// newDatabase creates an empty database for the test and returns its connection string.
func newDatabase(t *testing.T) string {
	t.Helper()
	if testDatabase == "" {
		t.Skipf("no PostgreSQL to test against: %s", testDatabaseWhy)
	}
	admin, err := sql.Open("postgres", testDatabase+" dbname=postgres")
	if err != nil {
		t.Fatal(err)
	}
	name := "test_" + randomHex(6)
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec("DROP DATABASE " + name + " WITH (FORCE)")
		admin.Close()
	})
	return testDatabase + " dbname=" + name
}

// newStore is a migrated store on a new database.
func newStore(t *testing.T) (*store, string) {
	t.Helper()
	dsn := newDatabase(t)
	data := openTestStore(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := data.waitReady(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("waitReady: %v", err)
	}
	return data, dsn
}

func openTestStore(t *testing.T, dsn string) *store {
	t.Helper()
	data, err := openStore(dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { data.db.Close() })
	return data
}

func TestMigrationCreatesTheSchemaOnceWithTheDefaultAdmin(t *testing.T) {
	data, _ := newStore(t)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := data.migrate(ctx); err != nil {
			t.Fatalf("migrate again: %v", err)
		}
	}
	var versions []int
	rows, err := data.db.Query(`SELECT version FROM schema_version ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v int
		_ = rows.Scan(&v)
		versions = append(versions, v)
	}
	rows.Close()
	if fmt.Sprint(versions) != fmt.Sprint([]int{1}) {
		t.Fatalf("schema_version = %v, want [1]", versions)
	}
	found, err := data.findUsers(ctx, "TEST@run.ai")
	if err != nil || len(found) != 1 || found[0] != (user{ID: adminUserID, Username: adminUsername, Enabled: true}) {
		t.Fatalf("findUsers = %v, %v", found, err)
	}
	for password, want := range map[string]bool{"password": true, "Password": false, "": false} {
		if got, err := data.checkPassword(ctx, adminUsername, password); err != nil || got != want {
			t.Fatalf("checkPassword(%q) = %v, %v; want %v", password, got, err, want)
		}
	}
}

func TestMigrationRefusesANewerSchema(t *testing.T) {
	data, _ := newStore(t)
	if _, err := data.db.Exec(`INSERT INTO schema_version (version) VALUES (99)`); err != nil {
		t.Fatal(err)
	}
	if err := data.migrate(context.Background()); err == nil || !strings.Contains(err.Error(), "version 99") {
		t.Fatalf("migrate = %v, want a refusal of version 99", err)
	}
}

func TestPasswordsAreStoredSaltedAndHashed(t *testing.T) {
	data, _ := newStore(t)
	ctx := context.Background()
	if err := data.setPassword(ctx, adminUserID, "first-secret"); err != nil {
		t.Fatal(err)
	}
	var first string
	_ = data.db.QueryRow(`SELECT password_hash FROM users WHERE id = $1`, adminUserID).Scan(&first)
	if err := data.setPassword(ctx, adminUserID, "first-secret"); err != nil {
		t.Fatal(err)
	}
	var second string
	_ = data.db.QueryRow(`SELECT password_hash FROM users WHERE id = $1`, adminUserID).Scan(&second)
	if strings.Contains(first, "first-secret") || first == second || !strings.HasPrefix(first, "pbkdf2-sha256$") {
		t.Fatalf("stored %q then %q: want two different salted hashes", first, second)
	}
	if ok, _ := data.checkPassword(ctx, adminUsername, "first-secret"); !ok {
		t.Fatal("the new password does not log in")
	}
	if err := data.setPassword(ctx, "no-such-id", "x"); err != errNotFound {
		t.Fatalf("setPassword of an unknown id = %v", err)
	}
}

func TestPBKDF2MatchesRFC7914(t *testing.T) {
	// RFC 7914 section 11: PBKDF2-HMAC-SHA256 (P="passwd", S="salt", c=1), the first 32 bytes.
	got := hex.EncodeToString(pbkdf2SHA256([]byte("passwd"), []byte("salt"), 1))
	if want := "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"; got != want {
		t.Fatalf("pbkdf2 = %s, want %s", got, want)
	}
	if verifyPassword("sha256$x", "x") || verifyPassword("pbkdf2-sha256$0$00$00", "x") {
		t.Fatal("a malformed hash verified")
	}
}

// client talks to a backend under test.
type client struct {
	t    *testing.T
	base string
}

func (c client) do(method, path, token, body string) (int, string) {
	c.t.Helper()
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	request, _ := http.NewRequest(method, c.base+path, reader)
	if token != "" {
		request.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		request.Header.Set("Content-Type", "application/json")
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		c.t.Fatal(err)
	}
	defer response.Body.Close()
	answer, _ := io.ReadAll(response.Body)
	return response.StatusCode, string(answer)
}

func (c client) login(password string) (int, string) {
	c.t.Helper()
	form := url.Values{"grant_type": {"password"}, "client_id": {"runai"},
		"username": {"test@run.ai"}, "password": {password}}
	response, err := http.PostForm(c.base+"/auth/realms/runai/protocol/openid-connect/token", form)
	if err != nil {
		c.t.Fatal(err)
	}
	defer response.Body.Close()
	var answer map[string]any
	_ = json.NewDecoder(response.Body).Decode(&answer)
	token, _ := answer["access_token"].(string)
	return response.StatusCode, token
}

func serve(t *testing.T, data *store) client {
	t.Helper()
	server := httptest.NewServer((&backend{version: "9.9.9", store: data, tokens: newTokens()}).routes())
	t.Cleanup(server.Close)
	return client{t: t, base: server.URL}
}

func TestLoginResetLoginAndRestart(t *testing.T) {
	data, dsn := newStore(t)
	c := serve(t, data)
	status, token := c.login("password")
	if status != http.StatusOK || token == "" {
		t.Fatalf("default login: %d", status)
	}
	reset := "/auth/admin/realms/runai/users/" + adminUserID + "/reset-password"
	credential := `{"type": "password", "value": "n3w", "temporary": false}`
	if status, _ := c.do(http.MethodPut, reset, "", credential); status != http.StatusUnauthorized {
		t.Fatalf("reset-password without a token: %d", status)
	}
	if status, _ := c.do(http.MethodPut, "/auth/admin/realms/runai/users/nobody/reset-password", token,
		credential); status != http.StatusNotFound {
		t.Fatalf("reset-password of an unknown user: %d", status)
	}
	if status, body := c.do(http.MethodPut, reset, token, credential); status != http.StatusNoContent {
		t.Fatalf("reset-password: %d %s", status, body)
	}
	if status, _ := c.login("password"); status != http.StatusUnauthorized {
		t.Fatalf("default login after reset: %d", status)
	}
	// Another backend on the same database (a restarted pod) has the new password.
	again := serve(t, openTestStoreReady(t, dsn))
	if status, _ := again.login("password"); status != http.StatusUnauthorized {
		t.Fatalf("default login after a restart: %d", status)
	}
	if status, _ := again.login("n3w"); status != http.StatusOK {
		t.Fatalf("new login after a restart: %d", status)
	}
	status, body := again.do(http.MethodGet, "/auth/admin/realms/runai/users?username=TEST@RUN.AI", token, "")
	if status != http.StatusUnauthorized {
		t.Fatalf("the old backend's token on the new one: %d %s", status, body)
	}
}

func openTestStoreReady(t *testing.T, dsn string) *store {
	t.Helper()
	data := openTestStore(t, dsn)
	if err := data.waitReady(context.Background(), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestProjectsAPI(t *testing.T) {
	data, dsn := newStore(t)
	c := serve(t, data)
	_, token := c.login("password")
	const path = "/v1/k8s/projects"

	for _, method := range []string{http.MethodGet, http.MethodPost} {
		if status, _ := c.do(method, path, "", `{"name": "team-a", "gpus": 2}`); status != http.StatusUnauthorized {
			t.Fatalf("%s %s without a token: %d", method, path, status)
		}
	}
	if status, _ := c.do(http.MethodGet, path+"/team-a", "not-a-token", ""); status != http.StatusUnauthorized {
		t.Fatalf("GET with an unknown token: %d", status)
	}
	status, body := c.do(http.MethodPost, path, token, `{"name": "team-a", "gpus": 2}`)
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, body)
	}
	var created project
	_ = json.Unmarshal([]byte(body), &created)
	if created.Name != "team-a" || created.GPUs != 2 || created.CreatedBy != adminUsername || created.CreatedAt.IsZero() {
		t.Fatalf("created = %+v", created)
	}
	if status, _ := c.do(http.MethodPost, path, token, `{"name": "team-a", "gpus": 1}`); status != http.StatusConflict {
		t.Fatalf("duplicate: %d", status)
	}
	if status, _ := c.do(http.MethodPost, path, token, `{"name": "team-b", "gpus": 0.5}`); status != http.StatusCreated {
		t.Fatalf("create with a fraction: %d", status)
	}
	for _, bad := range []string{
		`{"name": "Team-A", "gpus": 1}`, `{"name": "-a", "gpus": 1}`, `{"name": "a-", "gpus": 1}`,
		`{"name": "1a", "gpus": 1}`, `{"name": "a_b", "gpus": 1}`, `{"name": "", "gpus": 1}`,
		`{"name": "` + strings.Repeat("a", 58) + `", "gpus": 1}`, `{"name": "ok"}`, `{"name": "ok", "gpus": -1}`,
		`{"name": "ok", "gpus": "2"}`, `{"name": "ok", "gpus": 1, "extra": true}`, `not json`,
	} {
		if status, body := c.do(http.MethodPost, path, token, bad); status != http.StatusBadRequest {
			t.Fatalf("POST %s: %d %s, want 400", bad, status, body)
		}
	}
	status, body = c.do(http.MethodGet, path, token, "")
	var listed []project
	_ = json.Unmarshal([]byte(body), &listed)
	if status != http.StatusOK || len(listed) != 2 || listed[0].Name != "team-a" || listed[1].GPUs != 0.5 {
		t.Fatalf("list: %d %s", status, body)
	}
	if status, body := c.do(http.MethodGet, path+"/team-b", token, ""); status != http.StatusOK ||
		!strings.Contains(body, `"gpus":0.5`) {
		t.Fatalf("get: %d %s", status, body)
	}
	for _, missing := range []string{"/nothing", "/Not_A_Name"} {
		if status, _ := c.do(http.MethodGet, path+missing, token, ""); status != http.StatusNotFound {
			t.Fatalf("GET %s: %d", missing, status)
		}
	}
	if status, _ := c.do(http.MethodPut, path+"/team-a", token, `{}`); status != http.StatusMethodNotAllowed {
		t.Fatalf("PUT: %d", status)
	}
	if status, _ := c.do(http.MethodDelete, path+"/team-b", token, ""); status != http.StatusNoContent {
		t.Fatalf("delete: %d", status)
	}
	if status, _ := c.do(http.MethodDelete, path+"/team-b", token, ""); status != http.StatusNotFound {
		t.Fatalf("delete again: %d", status)
	}
	// In the database, not in the process: another backend on it lists what is left.
	again := serve(t, openTestStoreReady(t, dsn))
	_, otherToken := again.login("password")
	if status, body := again.do(http.MethodGet, path, otherToken, ""); status != http.StatusOK ||
		!strings.Contains(body, `"name":"team-a"`) || strings.Contains(body, "team-b") {
		t.Fatalf("list on another backend: %d %s", status, body)
	}
}

// forwarder relays TCP connections to TARGET while it runs; close drops it and every relayed connection.
type forwarder struct {
	listener net.Listener
	mu       sync.Mutex
	conns    []net.Conn
}

func forward(t *testing.T, address, target string) *forwarder {
	t.Helper()
	listener, err := net.Listen("tcp", address)
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{listener: listener}
	go func() {
		for {
			in, err := listener.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			f.mu.Lock()
			f.conns = append(f.conns, in, out)
			f.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return f
}

func (f *forwarder) close() {
	f.listener.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, conn := range f.conns {
		conn.Close()
	}
}

func waitStatus(t *testing.T, c client, path string, want int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, _ := c.do(http.MethodGet, path, "", "")
		if status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d, want %d", path, status, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReadinessFollowsTheDatabase(t *testing.T) {
	dsn := newDatabase(t)
	fields := map[string]string{}
	for _, field := range strings.Fields(dsn) {
		key, value, _ := strings.Cut(field, "=")
		fields[key] = value
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	relayed := strings.Replace(dsn, "port="+fields["port"], "port="+strconv.Itoa(port), 1) + " connect_timeout=2"
	data := openTestStore(t, relayed)
	c := serve(t, data)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = data.waitReady(ctx, 50*time.Millisecond) }()

	// No database yet: alive, not ready, and no login.
	time.Sleep(200 * time.Millisecond)
	waitStatus(t, c, "/healthz", http.StatusOK)
	waitStatus(t, c, "/readyz", http.StatusServiceUnavailable)
	if status, _ := c.login("password"); status != http.StatusServiceUnavailable {
		t.Fatalf("login without a database: %d", status)
	}
	// The database appears: the backend finds it on its own.
	relay := forward(t, "127.0.0.1:"+strconv.Itoa(port), fields["host"]+":"+fields["port"])
	waitStatus(t, c, "/readyz", http.StatusOK)
	if status, _ := c.login("password"); status != http.StatusOK {
		t.Fatalf("login with the database: %d", status)
	}
	// And goes away again: not ready.
	relay.close()
	waitStatus(t, c, "/readyz", http.StatusServiceUnavailable)
	waitStatus(t, c, "/healthz", http.StatusOK)
}

func TestParseKubeconfig(t *testing.T) {
	text := `apiVersion: v1
clusters:
- cluster:
    server: https://10.0.0.1:6443
  name: lab
contexts:
- context:
    cluster: lab
    user: kubernetes-admin
  name: kubernetes-admin@lab
- name: "researcher@lab"
  context:
    cluster: lab
    user: 'researcher'
current-context: researcher@lab
kind: Config
users:
- name: kubernetes-admin
  user:
    token: not-a-user-name
`
	current, users := parseKubeconfig(text)
	if current != "researcher@lab" {
		t.Fatalf("current-context = %q", current)
	}
	if users["researcher@lab"] != "researcher" || users["kubernetes-admin@lab"] != "kubernetes-admin" {
		t.Fatalf("users = %v", users)
	}
}
