package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSecrets is the secrets part of a Kubernetes API server: GET, POST and PUT of one namespace.
type fakeSecrets struct {
	mu       sync.Mutex
	token    string
	secrets  map[string]map[string]any
	requests []string
}

func (f *fakeSecrets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	if r.Header.Get("Authorization") != "Bearer "+f.token {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	const prefix = "/api/v1/namespaces/ns/secrets"
	name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, prefix), "/")
	switch {
	case r.Method == http.MethodGet && name != "":
		found, ok := f.secrets[name]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(found)
	case r.Method == http.MethodPost && name == "":
		var created map[string]any
		_ = json.NewDecoder(r.Body).Decode(&created)
		createdName := created["metadata"].(map[string]any)["name"].(string)
		if _, exists := f.secrets[createdName]; exists {
			w.WriteHeader(http.StatusConflict)
			return
		}
		f.secrets[createdName] = created
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPut && name != "":
		if _, exists := f.secrets[name]; !exists {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		var updated map[string]any
		_ = json.NewDecoder(r.Body).Decode(&updated)
		f.secrets[name] = updated
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func newStore(t *testing.T) (*passwordStore, *fakeSecrets) {
	t.Helper()
	fake := &fakeSecrets{token: "sa-token", secrets: map[string]map[string]any{}}
	server := httptest.NewServer(fake)
	t.Cleanup(server.Close)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("sa-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	kube, err := newKubeClient(server.URL, tokenFile, "")
	if err != nil {
		t.Fatal(err)
	}
	return &passwordStore{kube: kube, namespace: "ns", name: "admin"}, fake
}

func mustCheck(t *testing.T, store *passwordStore, password string, want bool) {
	t.Helper()
	got, err := store.check(password)
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	if got != want {
		t.Fatalf("check(%q) = %v, want %v", password, got, want)
	}
}

func TestPasswordStoreDefaultThenCreateThenUpdate(t *testing.T) {
	store, fake := newStore(t)
	mustCheck(t, store, "password", true)
	mustCheck(t, store, "other", false)

	if err := store.set("first-secret"); err != nil {
		t.Fatalf("set: %v", err)
	}
	mustCheck(t, store, "password", false)
	mustCheck(t, store, "first-secret", true)

	if err := store.set("second-secret"); err != nil {
		t.Fatalf("set: %v", err)
	}
	mustCheck(t, store, "first-secret", false)
	mustCheck(t, store, "second-secret", true)

	joined := strings.Join(fake.requests, "\n")
	if !strings.Contains(joined, "POST /api/v1/namespaces/ns/secrets\n") ||
		!strings.Contains(joined, "PUT /api/v1/namespaces/ns/secrets/admin") {
		t.Fatalf("expected a POST then a PUT, got:\n%s", joined)
	}
	stored, _ := json.Marshal(fake.secrets["admin"])
	if strings.Contains(string(stored), "second-secret") {
		t.Fatal("the password itself was stored")
	}
}

func TestPasswordStoreFailsOnAPIErrors(t *testing.T) {
	store, fake := newStore(t)
	fake.token = "another-token"
	if _, err := store.check("password"); err == nil {
		t.Fatal("check succeeded although the API refused the token")
	}
}

func TestLoginResetLogin(t *testing.T) {
	store, _ := newStore(t)
	server := httptest.NewServer((&backend{
		version: "9.9.9", store: store, tokens: &tokens{expires: map[string]time.Time{}},
	}).routes())
	defer server.Close()

	login := func(password string) (int, string) {
		form := url.Values{"grant_type": {"password"}, "client_id": {"runai"},
			"username": {"test@run.ai"}, "password": {password}}
		response, err := http.PostForm(server.URL+"/auth/realms/runai/protocol/openid-connect/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer response.Body.Close()
		var answer map[string]any
		_ = json.NewDecoder(response.Body).Decode(&answer)
		token, _ := answer["access_token"].(string)
		return response.StatusCode, token
	}
	status, token := login("password")
	if status != http.StatusOK || token == "" {
		t.Fatalf("default login: %d", status)
	}
	body := strings.NewReader(`{"type": "password", "value": "n3w", "temporary": false}`)
	request, _ := http.NewRequest(http.MethodPut,
		server.URL+"/auth/admin/realms/runai/users/"+adminUserID+"/reset-password", body)
	request.Header.Set("Authorization", "Bearer "+token)
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, response.Body)
	response.Body.Close()
	if response.StatusCode != http.StatusNoContent {
		t.Fatalf("reset-password: %d", response.StatusCode)
	}
	if status, _ := login("password"); status != http.StatusUnauthorized {
		t.Fatalf("default login after reset: %d", status)
	}
	if status, _ := login("n3w"); status != http.StatusOK {
		t.Fatalf("new login: %d", status)
	}
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
