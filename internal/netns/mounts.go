package netns

// Mount is one line of the mount table (see parseMountInfo).
type Mount = mount

// Mounts reads the calling thread's mount table, for other owners of
// mounts (internal/agent/podroot builds mount namespaces with it): one
// parser of /proc/thread-self/mountinfo in Duet.
func Mounts() ([]Mount, error) { return readMounts() }
