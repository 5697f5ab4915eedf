package main

// The control plane's data (users and projects) in PostgreSQL, as Run:ai's backend keeps it: the chart's
// runai-backend-postgresql StatefulSet, reached through the libpq environment (PGHOST, PGPORT, PGDATABASE,
// PGUSER, PGPASSWORD, PGSSLMODE) or a connection string.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lib/pq"
)

// migrations[i] takes the schema from version i to version i+1; applied in one transaction each.
var migrations = []string{
	`CREATE TABLE users (
		id            text PRIMARY KEY,
		username      text NOT NULL,
		enabled       boolean NOT NULL DEFAULT true,
		password_hash text NOT NULL,
		updated_at    timestamptz NOT NULL DEFAULT now()
	);
	CREATE UNIQUE INDEX users_username ON users (lower(username));
	CREATE TABLE projects (
		name       text PRIMARY KEY,
		gpus       double precision NOT NULL CHECK (gpus >= 0),
		created_by text NOT NULL,
		created_at timestamptz NOT NULL DEFAULT now()
	);`,
}

// schemaLock is the advisory lock that keeps two backends from migrating one database at once.
const schemaLock = 0x72756e6169 // "runai"

var (
	errNotFound  = errors.New("not found")
	errDuplicate = errors.New("already exists")
)

type store struct {
	db    *sql.DB
	ready atomic.Bool // the schema is in place; until then every request that needs data gets 503
}

// openStore opens (lazily: nothing connects yet) the database of DSN, or of the PG* environment when
// DSN is empty. lib/pq would otherwise require TLS; the in-cluster hop to the StatefulSet has none.
func openStore(dsn string) (*store, error) {
	if dsn == "" && strings.TrimSpace(os.Getenv("PGSSLMODE")) == "" {
		dsn = "sslmode=disable"
	}
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(8)
	db.SetConnMaxIdleTime(time.Minute)
	return &store{db: db}, nil
}

// waitReady migrates the schema, retrying every INTERVAL until the database answers (logging the first
// failure and each change of its message), and marks the store ready.
func (s *store) waitReady(ctx context.Context, interval time.Duration) error {
	var last string
	for {
		err := s.migrate(ctx)
		if err == nil {
			s.ready.Store(true)
			log.Printf("database ready")
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if message := err.Error(); message != last {
			log.Printf("database not ready, retrying every %s: %v", interval, err)
			last = message
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
	}
}

// migrate creates the tables that are missing and the default admin, under an advisory lock.
func (s *store) migrate(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, schemaLock); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (
		version    integer PRIMARY KEY,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`); err != nil {
		return err
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return err
	}
	if current > len(migrations) {
		return fmt.Errorf("the database has schema version %d; this backend knows up to %d", current, len(migrations))
	}
	for version := current; version < len(migrations); version++ {
		if _, err := tx.ExecContext(ctx, migrations[version]); err != nil {
			return fmt.Errorf("schema version %d: %w", version+1, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES ($1)`, version+1); err != nil {
			return err
		}
	}
	hash, err := newPasswordHash(defaultPassword)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, adminUserID, adminUsername, hash); err != nil {
		return err
	}
	return tx.Commit()
}

// ping tells whether the database answers now (the readiness probe).
func (s *store) ping(ctx context.Context) error {
	if !s.ready.Load() {
		return errors.New("the schema is not in place yet")
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return s.db.PingContext(ctx)
}

// --- Users --------------------------------------------------------------------------------------------

// checkPassword tells whether PASSWORD is USERNAME's (case-insensitive); false for an unknown or disabled
// user.
func (s *store) checkPassword(ctx context.Context, username, password string) (bool, error) {
	var stored string
	err := s.db.QueryRowContext(ctx,
		`SELECT password_hash FROM users WHERE lower(username) = lower($1) AND enabled`, username).Scan(&stored)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return verifyPassword(stored, password), nil
}

// findUsers returns the users whose name is USERNAME (case-insensitive), or all when it is empty.
func (s *store) findUsers(ctx context.Context, username string) ([]user, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, username, enabled FROM users
		WHERE $1 = '' OR lower(username) = lower($1) ORDER BY lower(username)`, username)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := []user{}
	for rows.Next() {
		var u user
		if err := rows.Scan(&u.ID, &u.Username, &u.Enabled); err != nil {
			return nil, err
		}
		found = append(found, u)
	}
	return found, rows.Err()
}

// setPassword stores PASSWORD (salted and hashed) for the user with ID; errNotFound when there is none.
func (s *store) setPassword(ctx context.Context, id, password string) error {
	hash, err := newPasswordHash(password)
	if err != nil {
		return err
	}
	result, err := s.db.ExecContext(ctx,
		`UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1`, id, hash)
	if err != nil {
		return err
	}
	if changed, err := result.RowsAffected(); err != nil {
		return err
	} else if changed == 0 {
		return errNotFound
	}
	return nil
}

// Passwords are stored as pbkdf2-sha256$ITERATIONS$SALT$KEY (hex), never as themselves.
const passwordIterations = 60000

func newPasswordHash(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := pbkdf2SHA256([]byte(password), salt, passwordIterations)
	return fmt.Sprintf("pbkdf2-sha256$%d$%x$%x", passwordIterations, salt, key), nil
}

func verifyPassword(stored, password string) bool {
	parts := strings.Split(stored, "$")
	if len(parts) != 4 || parts[0] != "pbkdf2-sha256" {
		return false
	}
	iterations, err := strconv.Atoi(parts[1])
	salt, saltErr := hex.DecodeString(parts[2])
	want, keyErr := hex.DecodeString(parts[3])
	if err != nil || saltErr != nil || keyErr != nil || iterations < 1 || len(want) != sha256.Size {
		return false
	}
	return subtle.ConstantTimeCompare(pbkdf2SHA256([]byte(password), salt, iterations), want) == 1
}

// pbkdf2SHA256 is RFC 8018's PBKDF2 with HMAC-SHA256, one block (32 bytes) of output; the module stays
// within the standard library and lib/pq (crypto/pbkdf2 needs Go 1.24).
func pbkdf2SHA256(password, salt []byte, iterations int) []byte {
	mac := hmac.New(sha256.New, password)
	mac.Write(salt)
	mac.Write(binary.BigEndian.AppendUint32(nil, 1))
	u := mac.Sum(nil)
	key := append([]byte(nil), u...)
	for i := 1; i < iterations; i++ {
		mac.Reset()
		mac.Write(u)
		u = mac.Sum(u[:0])
		for j := range key {
			key[j] ^= u[j]
		}
	}
	return key
}

// --- Projects -----------------------------------------------------------------------------------------

type project struct {
	Name      string    `json:"name"`
	GPUs      float64   `json:"gpus"`
	CreatedBy string    `json:"createdBy"`
	CreatedAt time.Time `json:"createdAt"`
}

func (s *store) createProject(ctx context.Context, name string, gpus float64, createdBy string) (project, error) {
	created := project{Name: name, GPUs: gpus, CreatedBy: createdBy}
	err := s.db.QueryRowContext(ctx,
		`INSERT INTO projects (name, gpus, created_by) VALUES ($1, $2, $3) RETURNING created_at`,
		name, gpus, createdBy).Scan(&created.CreatedAt)
	var pqErr *pq.Error
	if errors.As(err, &pqErr) && pqErr.Code == "23505" { // unique_violation
		return project{}, errDuplicate
	}
	created.CreatedAt = created.CreatedAt.UTC()
	return created, err
}

func (s *store) listProjects(ctx context.Context) ([]project, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, gpus, created_by, created_at FROM projects ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	found := []project{}
	for rows.Next() {
		var p project
		if err := rows.Scan(&p.Name, &p.GPUs, &p.CreatedBy, &p.CreatedAt); err != nil {
			return nil, err
		}
		p.CreatedAt = p.CreatedAt.UTC()
		found = append(found, p)
	}
	return found, rows.Err()
}

func (s *store) getProject(ctx context.Context, name string) (project, error) {
	var p project
	err := s.db.QueryRowContext(ctx, `SELECT name, gpus, created_by, created_at FROM projects WHERE name = $1`,
		name).Scan(&p.Name, &p.GPUs, &p.CreatedBy, &p.CreatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return project{}, errNotFound
	}
	p.CreatedAt = p.CreatedAt.UTC()
	return p, err
}

func (s *store) deleteProject(ctx context.Context, name string) error {
	result, err := s.db.ExecContext(ctx, `DELETE FROM projects WHERE name = $1`, name)
	if err != nil {
		return err
	}
	if deleted, err := result.RowsAffected(); err != nil {
		return err
	} else if deleted == 0 {
		return errNotFound
	}
	return nil
}
