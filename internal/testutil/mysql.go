package testutil

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

// DefaultMySQLDSN is the server `make test` starts; PUSHER_TEST_MYSQL_DSN
// overrides it.
const DefaultMySQLDSN = "root@tcp(127.0.0.1:3306)/"

// MySQLDB is a database of a test's own on the test server, dropped when
// the test ends.
type MySQLDB struct {
	Name  string
	DSN   string        // names the database
	DB    *sql.DB       // on the database, to check what was written
	Admin *sql.DB       // on the server, as the test user
	Base  *mysql.Config // the test server's DSN, without a database
}

// NewMySQLDB creates a database for t. Without a server the test is
// skipped, or fails under CI=true.
func NewMySQLDB(t testing.TB) *MySQLDB {
	t.Helper()
	base := os.Getenv("PUSHER_TEST_MYSQL_DSN")
	if base == "" {
		base = DefaultMySQLDSN
	}
	cfg, err := mysql.ParseDSN(base)
	if err != nil {
		t.Fatalf("PUSHER_TEST_MYSQL_DSN: %v", err)
	}
	cfg.DBName = ""
	admin, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		admin.Close()
		SkipOrFail(t, "MariaDB at %s: %v (make test starts it)", cfg.Addr, err)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	d := &MySQLDB{Name: "gp_test_" + hex.EncodeToString(rnd[:]), Admin: admin, Base: cfg}
	if _, err := admin.Exec("CREATE DATABASE " + d.Name); err != nil {
		admin.Close()
		t.Fatal(err)
	}
	d.DSN = d.DSNVia(cfg.Addr)
	if d.DB, err = sql.Open("mysql", d.DSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.DB.Close()
		if _, err := admin.Exec("DROP DATABASE IF EXISTS " + d.Name); err != nil {
			t.Errorf("drop database %s: %v", d.Name, err)
		}
		admin.Close()
	})
	return d
}

// DSNVia is the database's DSN through addr (a proxy, say).
func (d *MySQLDB) DSNVia(addr string) string {
	cfg := d.Base.Clone()
	cfg.DBName, cfg.Addr = d.Name, addr
	return cfg.FormatDSN()
}
