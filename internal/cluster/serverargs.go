package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ServerArgsFile, in the data directory, holds the arguments duet up runs
// its server with (single-server clusters), as one JSON array. The
// supervisor reads it again each time it restarts the server, so a server
// stopped after the file was edited comes back with the new flags: how a
// running cluster is restarted with a second family appended to
// --cluster-cidr and --service-cluster-ip-range (the upstream way to turn
// a single-stack cluster dual-stack), with nothing else restarted.
const ServerArgsFile = "server-args.json"

// writeServerArgs records the server's arguments in dataDir.
func writeServerArgs(dataDir string, args []string) error {
	data, err := json.MarshalIndent(args, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dataDir, ServerArgsFile), append(data, '\n'), 0o600)
}

// readServerArgs returns the arguments recorded at path, or an error
// saying why they cannot be used (then the previous ones are).
func readServerArgs(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseServerArgs(data)
}

func parseServerArgs(data []byte) ([]string, error) {
	var args []string
	if err := json.Unmarshal(data, &args); err != nil {
		return nil, fmt.Errorf("%s: want a JSON array of strings: %w", ServerArgsFile, err)
	}
	if len(args) == 0 || args[0] != "server" {
		return nil, fmt.Errorf("%s: the first argument must be \"server\", got %q", ServerArgsFile, args)
	}
	return args, nil
}
