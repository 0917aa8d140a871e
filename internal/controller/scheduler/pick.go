package scheduler

import (
	"fmt"
	"sort"
	"strings"
)

// fitError says why a pod fits no node: for each reason, how many nodes
// gave it.
type fitError struct {
	nodes   int
	reasons map[string]int
}

// Error is the message Kubernetes' scheduler gives, reasons sorted:
// "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated
// taint(s)."
func (e *fitError) Error() string {
	if e.nodes == 0 {
		return "no nodes available to schedule pods"
	}
	var parts []string
	for r, n := range e.reasons {
		parts = append(parts, fmt.Sprintf("%d %s", n, r))
	}
	sort.Strings(parts)
	return fmt.Sprintf("0/%d nodes are available: %s.", e.nodes, strings.Join(parts, ", "))
}

// pick returns the best node for the attempt's pod, or why none fits.
func (c *clusterState) pick(a *attempt) (string, *fitError) {
	fe := &fitError{reasons: map[string]int{}}
	var feasible []*nodeInfo
	for _, n := range c.nodes {
		if n.node == nil {
			continue
		}
		fe.nodes++
		if a.pod.err != nil {
			fe.reasons[a.pod.err.Error()]++
			continue
		}
		fits := true
		for _, f := range filters {
			if reasons := f(a, n); len(reasons) > 0 {
				for _, r := range reasons {
					fe.reasons[r]++
				}
				fits = false
				break
			}
		}
		if fits {
			feasible = append(feasible, n)
		}
	}
	switch len(feasible) {
	case 0:
		return "", fe
	case 1:
		return feasible[0].node.Name, nil
	}
	total := make([]int64, len(feasible))
	scores := make([]int64, len(feasible))
	for _, s := range scorers {
		for i, n := range feasible {
			scores[i] = s.raw(a, n)
		}
		if s.normalize != nil {
			s.normalize(scores)
		}
		for i := range scores {
			total[i] += s.weight * scores[i]
		}
	}
	best := 0
	for i := 1; i < len(feasible); i++ {
		if better(total[i], feasible[i], total[best], feasible[best]) {
			best = i
		}
	}
	return feasible[best].node.Name, nil
}

// better breaks ties between equal scores by fewer pods, then by name, so
// that a choice is reproducible.
func better(s1 int64, n1 *nodeInfo, s2 int64, n2 *nodeInfo) bool {
	if s1 != s2 {
		return s1 > s2
	}
	if len(n1.pods) != len(n2.pods) {
		return len(n1.pods) < len(n2.pods)
	}
	return n1.node.Name < n2.node.Name
}
