package apiserver

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckSnapshotHash(t *testing.T) {
	db := make([]byte, 4096)
	for i := range db {
		db[i] = byte(i * 7)
	}
	sum := sha256.Sum256(db)
	good := append(append([]byte{}, db...), sum[:]...)
	damaged := append([]byte{}, good...)
	damaged[len(db)/2] ^= 0xff
	for _, tc := range []struct {
		name, wantErr string
		data          []byte
	}{
		{"intact", "", good},
		{"a byte flipped", "checksum does not match", damaged},
		{"no checksum", "carries no checksum", db},
		{"cut short", "carries no checksum", good[:len(good)-10]},
		{"empty", "carries no checksum", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "snap.db")
			if err := os.WriteFile(file, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			err := checkSnapshotHash(file)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("checkSnapshotHash = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
