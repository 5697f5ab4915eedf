// Command runai-synthetic is a SYNTHETIC stand-in for Run:ai's software, built for the appliance's tests:
// it is not Run:ai's code and does nothing Run:ai does beyond the few answers the Ansible roles check.
//
// One static binary serves every image of the synthetic air-gapped tarball:
//
//	runai-synthetic backend ...   the control plane: a web page, /version, a Keycloak-like login and a
//	                              projects API, its users and projects in PostgreSQL (store.go)
//	runai-synthetic proxy ...     TLS reverse proxy in front of the backend (the chart's ingress controller)
//	runai-synthetic agent ...     the Run:ai cluster's connection to its control plane
//	runai ...                     (the binary called as `runai`) the researcher CLI: version, completion, whoami
//
// The standard library and github.com/lib/pq only (pinned by go.sum, fetched through the module proxy
// into the builder's cache; never vendored).
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// version is set at build time: go build -ldflags "-X main.version=2.9.0".
var version = "dev"

const (
	realm           = "runai"
	clientID        = "runai"
	adminUsername   = "test@run.ai"
	adminUserID     = "6f1c2d3e-4a5b-4c6d-8e7f-900000000001" // fixed: the roles look it up by username
	defaultPassword = "password"                             // Run:ai's well-known default, until changed
	tokenLifetime   = 300 * time.Second
)

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	if filepath.Base(os.Args[0]) == "runai" {
		os.Exit(runaiCLI(os.Args[1:], os.Stdout, os.Stderr))
	}
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "backend":
		err = backendMain(os.Args[2:])
	case "proxy":
		err = proxyMain(os.Args[2:])
	case "agent":
		err = agentMain(os.Args[2:])
	case "runai":
		os.Exit(runaiCLI(os.Args[2:], os.Stdout, os.Stderr))
	case "version":
		fmt.Println(version)
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		log.Fatalf("%s: %v", os.Args[1], err)
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: %s backend|proxy|agent|runai|version [flags] (synthetic Run:ai stand-in %s)\n",
		filepath.Base(os.Args[0]), version)
}

// ---------------------------------------------------------------------------------------------------------
// Logging of request lines: method, path and status only (never a query, a body or a header, so never a
// password or a token).

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func logRequests(handler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		handler.ServeHTTP(recorder, r)
		log.Printf("%s %s %d", r.Method, r.URL.Path, recorder.status)
	})
}

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value)
}

func serveTLS(listen, certFile, keyFile string, handler http.Handler) error {
	server := &http.Server{
		Addr:              listen,
		Handler:           logRequests(handler),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12},
	}
	log.Printf("listening on %s (TLS)", listen)
	return server.ListenAndServeTLS(certFile, keyFile)
}

// ---------------------------------------------------------------------------------------------------------
// backend: the control plane.

type session struct {
	username string
	expires  time.Time
}

// tokens are the bearer tokens the login issued, in memory: a restarted backend asks for a new login.
type tokens struct {
	mu       sync.Mutex
	sessions map[string]session
}

func newTokens() *tokens { return &tokens{sessions: map[string]session{}} }

func (t *tokens) issue(username string) (string, error) {
	raw := make([]byte, 24)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	token := hex.EncodeToString(raw)
	t.mu.Lock()
	defer t.mu.Unlock()
	now := time.Now()
	for known, held := range t.sessions {
		if now.After(held.expires) {
			delete(t.sessions, known)
		}
	}
	t.sessions[token] = session{username: username, expires: now.Add(tokenLifetime)}
	return token, nil
}

// user returns the user of the request's bearer token, "" when it has none that is valid.
func (t *tokens) user(r *http.Request) string {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return ""
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	held, known := t.sessions[token]
	if !known || !time.Now().Before(held.expires) {
		return ""
	}
	return held.username
}

func (t *tokens) valid(r *http.Request) bool { return t.user(r) != "" }

type backend struct {
	version string
	store   *store
	tokens  *tokens
}

func (b *backend) routes() http.Handler {
	mux := http.NewServeMux()
	// Liveness: the process serves. Readiness (/readyz) also needs the database.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := b.store.ping(r.Context()); err != nil {
			http.Error(w, "database not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"version": b.version})
	})
	mux.HandleFunc("/auth/realms/"+realm+"/protocol/openid-connect/token", b.needsData(b.token))
	mux.HandleFunc("/auth/admin/realms/"+realm+"/users", b.needsData(b.users))
	mux.HandleFunc("/auth/admin/realms/"+realm+"/users/", b.needsData(b.resetPassword))
	mux.HandleFunc(projectsPath, b.needsData(b.projects))
	mux.HandleFunc(projectsPath+"/", b.needsData(b.project))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!DOCTYPE html>\n<html><head><title>Run:ai</title></head>"+
			"<body><h1>Run:ai control plane (synthetic) %s</h1>"+
			"<p>A synthetic stand-in built for tests; not Run:ai's software.</p></body></html>\n", b.version)
	})
	return mux
}

// needsData answers 503 until the database's schema is in place.
func (b *backend) needsData(handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !b.store.ready.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "database not ready"})
			return
		}
		handler(w, r)
	}
}

func storeFailed(w http.ResponseWriter, err error) {
	log.Printf("database: %v", err)
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "unknown_error"})
}

func (b *backend) token(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
		return
	}
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
		return
	}
	if r.PostForm.Get("grant_type") != "password" {
		writeJSON(w, http.StatusBadRequest, map[string]string{
			"error": "unsupported_grant_type", "error_description": "Unsupported grant_type",
		})
		return
	}
	if r.PostForm.Get("client_id") != clientID {
		writeJSON(w, http.StatusUnauthorized, map[string]string{
			"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials",
		})
		return
	}
	username := strings.ToLower(r.PostForm.Get("username"))
	matches, err := b.store.checkPassword(r.Context(), username, r.PostForm.Get("password"))
	if err != nil {
		storeFailed(w, err)
		return
	}
	if !matches {
		writeJSON(w, http.StatusUnauthorized, map[string]string{
			"error": "invalid_grant", "error_description": "Invalid user credentials",
		})
		return
	}
	token, err := b.tokens.issue(username)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "unknown_error"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": token, "token_type": "Bearer", "expires_in": int(tokenLifetime.Seconds()),
	})
}

func unauthorized(w http.ResponseWriter) {
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "HTTP 401 Unauthorized"})
}

type user struct {
	ID       string `json:"id"`
	Username string `json:"username"`
	Enabled  bool   `json:"enabled"`
}

// users answers GET .../users?username=U with the matching users (Keycloak matches case-insensitively).
func (b *backend) users(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
		return
	}
	if !b.tokens.valid(r) {
		unauthorized(w)
		return
	}
	found, err := b.store.findUsers(r.Context(), r.URL.Query().Get("username"))
	if err != nil {
		storeFailed(w, err)
		return
	}
	writeJSON(w, http.StatusOK, found)
}

// resetPassword answers PUT .../users/{id}/reset-password with {"type": "password", "value": V}.
func (b *backend) resetPassword(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, "/auth/admin/realms/"+realm+"/users/")
	id, action, _ := strings.Cut(rest, "/")
	if action != "reset-password" {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPut {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
		return
	}
	if !b.tokens.valid(r) {
		unauthorized(w)
		return
	}
	var credential struct {
		Type      string `json:"type"`
		Value     string `json:"value"`
		Temporary bool   `json:"temporary"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&credential); err != nil ||
		credential.Type != "password" || credential.Value == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{
			"error": "invalid_request", "error_description": `expected {"type": "password", "value": "..."}`,
		})
		return
	}
	switch err := b.store.setPassword(r.Context(), id, credential.Value); {
	case errors.Is(err, errNotFound):
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "User not found"})
	case err != nil:
		storeFailed(w, err)
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// The projects API: POST and GET on projectsPath, GET and DELETE on projectsPath/NAME, with a bearer token.
const projectsPath = "/v1/k8s/projects"

// A project's name becomes part of its namespace's (runai-NAME): a DNS label of at most 57 characters.
var projectName = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,55}[a-z0-9])?$`)

const maxProjectGPUs = 100000

func (b *backend) projects(w http.ResponseWriter, r *http.Request) {
	username := b.tokens.user(r)
	if username == "" {
		unauthorized(w)
		return
	}
	switch r.Method {
	case http.MethodGet:
		found, err := b.store.listProjects(r.Context())
		if err != nil {
			storeFailed(w, err)
			return
		}
		writeJSON(w, http.StatusOK, found)
	case http.MethodPost:
		var wanted struct {
			Name string   `json:"name"`
			GPUs *float64 `json:"gpus"`
		}
		decoder := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
		decoder.DisallowUnknownFields()
		if err := decoder.Decode(&wanted); err != nil {
			badRequest(w, `expected {"name": "...", "gpus": N}: `+err.Error())
			return
		}
		if !projectName.MatchString(wanted.Name) {
			badRequest(w, fmt.Sprintf("project name %q: lower-case letters, digits and '-', starting with a "+
				"letter, not ending with '-', at most 57 characters", wanted.Name))
			return
		}
		if wanted.GPUs == nil || *wanted.GPUs < 0 || *wanted.GPUs > maxProjectGPUs {
			badRequest(w, fmt.Sprintf("gpus is required: a number from 0 to %d", maxProjectGPUs))
			return
		}
		created, err := b.store.createProject(r.Context(), wanted.Name, *wanted.GPUs, username)
		if errors.Is(err, errDuplicate) {
			writeJSON(w, http.StatusConflict, map[string]string{
				"error": "conflict", "error_description": fmt.Sprintf("project %q exists", wanted.Name),
			})
			return
		}
		if err != nil {
			storeFailed(w, err)
			return
		}
		w.Header().Set("Location", projectsPath+"/"+created.Name)
		writeJSON(w, http.StatusCreated, created)
	default:
		w.Header().Set("Allow", "GET, POST")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
	}
}

func (b *backend) project(w http.ResponseWriter, r *http.Request) {
	if b.tokens.user(r) == "" {
		unauthorized(w)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, projectsPath+"/")
	if !projectName.MatchString(name) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "project not found"})
		return
	}
	var err error
	switch r.Method {
	case http.MethodGet:
		var found project
		if found, err = b.store.getProject(r.Context(), name); err == nil {
			writeJSON(w, http.StatusOK, found)
			return
		}
	case http.MethodDelete:
		if err = b.store.deleteProject(r.Context(), name); err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
	default:
		w.Header().Set("Allow", "GET, DELETE")
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method_not_allowed"})
		return
	}
	if errors.Is(err, errNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "project not found"})
		return
	}
	storeFailed(w, err)
}

func badRequest(w http.ResponseWriter, description string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": description})
}

func backendMain(args []string) error {
	flags := flag.NewFlagSet("backend", flag.ExitOnError)
	listen := flags.String("listen", ":8443", "address to serve HTTPS on")
	certFile := flags.String("tls-cert", "", "TLS certificate (PEM)")
	keyFile := flags.String("tls-key", "", "TLS private key (PEM)")
	database := flags.String("database", "",
		"PostgreSQL connection string (default: libpq's PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE)")
	retry := flags.Duration("database-retry", 2*time.Second, "time between attempts to reach the database")
	shownVersion := flags.String("version", version, "version the control plane reports")
	_ = flags.Parse(args)
	if *certFile == "" || *keyFile == "" {
		return errors.New("--tls-cert and --tls-key are required")
	}
	data, err := openStore(*database)
	if err != nil {
		return err
	}
	server := &backend{version: *shownVersion, store: data, tokens: newTokens()}
	// Serve at once (liveness), ready only once the database answers: it may start after the backend.
	go func() { _ = data.waitReady(context.Background(), *retry) }()
	log.Printf("Run:ai control plane (synthetic) %s; data in PostgreSQL", *shownVersion)
	return serveTLS(*listen, *certFile, *keyFile, server.routes())
}

// ---------------------------------------------------------------------------------------------------------
// proxy: the stand-in for the chart's runai-backend-nginx-ingress-controller.

func proxyMain(args []string) error {
	flags := flag.NewFlagSet("proxy", flag.ExitOnError)
	listen := flags.String("listen", ":443", "address to serve HTTPS on")
	certFile := flags.String("tls-cert", "", "TLS certificate (PEM)")
	keyFile := flags.String("tls-key", "", "TLS private key (PEM)")
	upstream := flags.String("upstream", "", "backend URL, https://HOST:PORT")
	_ = flags.Parse(args)
	if *certFile == "" || *keyFile == "" || *upstream == "" {
		return errors.New("--tls-cert, --tls-key and --upstream are required")
	}
	target, err := url.Parse(*upstream)
	if err != nil || target.Scheme == "" || target.Host == "" {
		return fmt.Errorf("--upstream %q is not a URL like https://HOST:PORT", *upstream)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// The upstream is the backend's in-cluster Service, serving the same self-signed certificate under the
	// domain's name, not the Service's: the hop stays inside the cluster network, so it is encrypted but
	// not verified (as the real chart's ingress controller does with backend-protocol HTTPS).
	transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // see above
	proxy.Transport = transport
	proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		log.Printf("upstream %s: %v", target.Host, err)
		w.WriteHeader(http.StatusBadGateway)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.Handle("/", proxy)
	log.Printf("proxying to %s", target.Redacted())
	return serveTLS(*listen, *certFile, *keyFile, mux)
}

// ---------------------------------------------------------------------------------------------------------
// agent: the Run:ai cluster's link to its control plane.

type agentState struct {
	mu        sync.Mutex
	connected bool
	version   string
}

func (s *agentState) record(backendURL, got string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if s.connected || s.version == "" {
			log.Printf("cannot reach control plane %s: %v", backendURL, err)
		}
		s.connected = false
		s.version = "-" // logs the next success, and a failure only once after it
		return
	}
	if !s.connected || s.version != got {
		log.Printf("connected to control plane %s (version %s)", backendURL, got)
	}
	s.connected, s.version = true, got
}

func (s *agentState) ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.connected
}

func loadCertPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return pool, nil
}

func pollVersion(client *http.Client, backendURL, clusterUID string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, backendURL+"/version", nil)
	if err != nil {
		return "", err
	}
	request.Header.Set("X-Runai-Cluster-Uid", clusterUID)
	response, err := client.Do(request)
	if err != nil {
		return "", err
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /version: HTTP %d", response.StatusCode)
	}
	var answer struct {
		Version string `json:"version"`
	}
	if err := json.NewDecoder(io.LimitReader(response.Body, 1<<16)).Decode(&answer); err != nil {
		return "", fmt.Errorf("GET /version: %w", err)
	}
	if answer.Version == "" {
		return "", errors.New("GET /version: no version")
	}
	return answer.Version, nil
}

func agentMain(args []string) error {
	flags := flag.NewFlagSet("agent", flag.ExitOnError)
	backendURL := flags.String("backend-url", "", "control plane URL, https://DOMAIN")
	caFile := flags.String("ca-file", "", "CA that signed the control plane's certificate (PEM)")
	clusterUID := flags.String("cluster-uid", "", "this cluster's UID in the control plane")
	clusterURL := flags.String("cluster-url", "", "this cluster's own URL (reported in the log only)")
	listen := flags.String("listen", ":8080", "address of /healthz and /readyz (HTTP)")
	interval := flags.Duration("interval", 5*time.Second, "time between polls of the control plane")
	_ = flags.Parse(args)
	if *backendURL == "" || *caFile == "" || *clusterUID == "" {
		return errors.New("--backend-url, --ca-file and --cluster-uid are required")
	}
	if !strings.HasPrefix(*backendURL, "https://") {
		return fmt.Errorf("--backend-url %q must start with https://", *backendURL)
	}
	pool, err := loadCertPool(*caFile)
	if err != nil {
		return err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	client := &http.Client{Transport: transport}
	base := strings.TrimSuffix(*backendURL, "/")
	state := &agentState{}
	log.Printf("cluster %s (%s): polling %s every %s", *clusterUID, *clusterURL, base, *interval)
	go func() {
		for {
			got, err := pollVersion(client, base, *clusterUID)
			state.record(base, got, err)
			time.Sleep(*interval)
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !state.ready() {
			http.Error(w, "not connected to the control plane", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ok")
	})
	server := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return server.ListenAndServe()
}

// ---------------------------------------------------------------------------------------------------------
// runai: the researcher CLI stand-in.

const bashCompletion = `# bash completion for runai (synthetic stand-in)
_runai() {
    local current="${COMP_WORDS[COMP_CWORD]}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        mapfile -t COMPREPLY < <(compgen -W "version completion whoami" -- "$current")
    elif [ "$COMP_CWORD" -eq 2 ] && [ "${COMP_WORDS[1]}" = "completion" ]; then
        mapfile -t COMPREPLY < <(compgen -W "bash" -- "$current")
    fi
}
complete -F _runai runai
`

func runaiCLI(args []string, stdout, stderr io.Writer) int {
	command := ""
	if len(args) > 0 {
		command = args[0]
	}
	switch {
	case command == "version":
		fmt.Fprintf(stdout, "Version: %s\n", version)
	case command == "completion" && len(args) == 2 && args[1] == "bash":
		fmt.Fprint(stdout, bashCompletion)
	case command == "whoami":
		name, err := currentUser()
		if err != nil {
			fmt.Fprintf(stderr, "runai: %v\n", err)
			return 1
		}
		fmt.Fprintln(stdout, name)
	default:
		fmt.Fprintln(stderr, "usage: runai version | completion bash | whoami (synthetic stand-in)")
		return 2
	}
	return 0
}

func kubeconfigPaths() []string {
	if value := os.Getenv("KUBECONFIG"); value != "" {
		return filepath.SplitList(value)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	return []string{filepath.Join(home, ".kube", "config")}
}

// currentUser is the user of the current context, from the first kubeconfig that names one.
func currentUser() (string, error) {
	var current string
	users := map[string]string{} // context name -> user; the first file that defines a context wins
	read := 0
	for _, path := range kubeconfigPaths() {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		read++
		fileCurrent, fileUsers := parseKubeconfig(string(data))
		if current == "" {
			current = fileCurrent
		}
		for name, user := range fileUsers {
			if _, seen := users[name]; !seen {
				users[name] = user
			}
		}
	}
	switch {
	case read == 0:
		return "", fmt.Errorf("no kubeconfig found (%s)", strings.Join(kubeconfigPaths(), ":"))
	case current == "":
		return "", errors.New("the kubeconfig has no current-context")
	case users[current] == "":
		return "", fmt.Errorf("context %q has no user", current)
	}
	return users[current], nil
}

// parseKubeconfig reads current-context and, for each item of contexts, its name and context.user.
//
// A line-based reader, not YAML (stdlib only): it understands the block style kubectl and kubeadm
// write: top-level keys at column 0, `contexts:` items starting with "- ", one "key: value" per line.
// Flow style ({...}) and multi-line scalars are not understood.
func parseKubeconfig(text string) (string, map[string]string) {
	current := ""
	users := map[string]string{}
	section := ""
	itemIndent := -1
	var name, user string
	flush := func() {
		if name != "" && user != "" {
			users[name] = user
		}
		name, user = "", ""
	}
	scanner := bufio.NewScanner(strings.NewReader(text))
	for scanner.Scan() {
		line := strings.TrimRight(scanner.Text(), " \t\r")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " "))
		if indent == 0 && !strings.HasPrefix(trimmed, "- ") {
			if section == "contexts" {
				flush()
			}
			key, value, _ := strings.Cut(trimmed, ":")
			section = key
			itemIndent = -1
			if key == "current-context" {
				current = unquote(strings.TrimSpace(value))
			}
			continue
		}
		if section != "contexts" {
			continue
		}
		if strings.HasPrefix(trimmed, "- ") && (itemIndent < 0 || indent == itemIndent) {
			flush()
			itemIndent = indent
			trimmed = strings.TrimSpace(strings.TrimPrefix(trimmed, "- "))
		}
		key, value, found := strings.Cut(trimmed, ":")
		if !found {
			continue
		}
		switch strings.TrimSpace(key) {
		case "name":
			if indent <= itemIndent+2 { // the item's own name, not a nested one
				name = unquote(strings.TrimSpace(value))
			}
		case "user":
			user = unquote(strings.TrimSpace(value))
		}
	}
	if section == "contexts" {
		flush()
	}
	return current, users
}

func unquote(value string) string {
	if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
		return value[1 : len(value)-1]
	}
	return value
}
