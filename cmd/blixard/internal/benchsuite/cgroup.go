package benchsuite

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// cgroupRoot is where the cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// cgroupLimitFiles are the files that carry a VM's CPU and memory limits
// (cgroup v1 and v2 names); whichever exist are copied.
var cgroupLimitFiles = []string{
	"cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us", "memory.limit_in_bytes", // v1
	"cpu.weight", "cpu.max", "memory.max", // v2
}

// cgroupCopy is a set of cgroups made next to another process's, with
// its limits, for a hand-run process to join.
type cgroupCopy struct{ dirs []string }

// copyCgroups makes, next to every non-root cgroup process pid is in, a
// sibling cgroup named name with the same CPU and memory limits. It
// returns nil when pid is in no cgroup of its own.
func copyCgroups(pid int, name string) (*cgroupCopy, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	c := &cgroupCopy{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 || parts[2] == "/" {
			continue
		}
		var src string
		switch {
		case parts[0] == "0" && parts[1] == "":
			src = filepath.Join(cgroupRoot, parts[2])
		case parts[1] == "cpu" || parts[1] == "memory":
			src = filepath.Join(cgroupRoot, parts[1], parts[2])
		default:
			continue
		}
		dst := filepath.Join(filepath.Dir(src), name)
		if err := os.Mkdir(dst, 0o755); err != nil && !os.IsExist(err) {
			c.remove()
			return nil, err
		}
		c.dirs = append(c.dirs, dst)
		for _, f := range cgroupLimitFiles {
			v, err := os.ReadFile(filepath.Join(src, f))
			if err != nil {
				continue
			}
			if err := os.WriteFile(filepath.Join(dst, f), v, 0); err != nil {
				c.remove()
				return nil, fmt.Errorf("copying %s: %w", f, err)
			}
		}
	}
	if len(c.dirs) == 0 {
		return nil, nil
	}
	return c, nil
}

// join moves pid into the copies.
func (c *cgroupCopy) join(pid int) error {
	for _, d := range c.dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes the copies (they must be empty by then).
func (c *cgroupCopy) remove() {
	if c == nil {
		return
	}
	for _, d := range c.dirs {
		os.Remove(d)
	}
}
