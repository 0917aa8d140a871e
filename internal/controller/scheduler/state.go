package scheduler

import (
	corev1 "k8s.io/api/core/v1"
)

// nodeInfo is one node with what its pods take of it.
type nodeInfo struct {
	node *corev1.Node // nil while pods name a node the cache has not seen
	pods map[string]*podInfo
	// allocatable is node's status.allocatable, parsed.
	allocatable    resources
	allocatablePod int64
	requested      resources
	nonZeroCPU     int64
	nonZeroMemory  int64
	ports          []hostPort
}

func (n *nodeInfo) setNode(node *corev1.Node) {
	n.node = node
	n.allocatable = resourcesOf(node.Status.Allocatable)
	n.allocatablePod = node.Status.Allocatable.Pods().Value()
}

func (n *nodeInfo) addPod(p *podInfo) {
	n.pods[p.key] = p
	n.requested.add(&p.requests, 1)
	n.nonZeroCPU += p.nonZeroCPU
	n.nonZeroMemory += p.nonZeroMemory
	n.ports = append(n.ports, p.ports...)
}

func (n *nodeInfo) removePod(p *podInfo) {
	delete(n.pods, p.key)
	n.requested.add(&p.requests, -1)
	n.nonZeroCPU -= p.nonZeroCPU
	n.nonZeroMemory -= p.nonZeroMemory
	if len(p.ports) > 0 {
		n.ports = n.ports[:0]
		for _, q := range n.pods {
			n.ports = append(n.ports, q.ports...)
		}
	}
}

// cache is the scheduler's view of the cluster: nodes and the pods bound
// or being bound to them. Bindings the scheduler made count at once
// (assumed) and are confirmed when the pod informer shows them, so that a
// burst of pods spreads instead of piling onto the node that looked
// emptiest.
type clusterState struct {
	nodes map[string]*nodeInfo
	// podNode is where each counted pod is, assumed or confirmed.
	podNode map[string]string
	assumed map[string]bool
	// withAffinity holds the counted pods that have pod (anti-)affinity
	// terms: they constrain every pod the scheduler places.
	withAffinity map[string]*podInfo
}

func newClusterState() *clusterState {
	return &clusterState{nodes: map[string]*nodeInfo{}, podNode: map[string]string{}, assumed: map[string]bool{}, withAffinity: map[string]*podInfo{}}
}

func (c *clusterState) info(name string) *nodeInfo {
	n := c.nodes[name]
	if n == nil {
		n = &nodeInfo{pods: map[string]*podInfo{}}
		c.nodes[name] = n
	}
	return n
}

// setNode adds or updates a node.
func (c *clusterState) setNode(node *corev1.Node) {
	c.info(node.Name).setNode(node)
}

// removeNode forgets a node; its pods stay counted under its name until
// they go, as they may still run there.
func (c *clusterState) removeNode(name string) {
	n := c.nodes[name]
	if n == nil {
		return
	}
	if len(n.pods) == 0 {
		delete(c.nodes, name)
		return
	}
	n.node = nil
}

// counts tells whether pod takes room on its node: bound and not
// finished. A terminating pod still runs, so it counts until it is gone.
func counts(pod *corev1.Pod) bool {
	return pod.Spec.NodeName != "" && pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// setPod records a pod the informer reports: counted on its node if it
// counts, forgotten otherwise. A pod the scheduler assumed is confirmed.
func (c *clusterState) setPod(pod *corev1.Pod) {
	key := pod.Namespace + "/" + pod.Name
	if !counts(pod) {
		// A report of the pod from before its binding does not undo
		// the binding in flight.
		if c.assumed[key] && needsBinding(pod) {
			return
		}
		c.removePod(key)
		return
	}
	c.place(newPodInfo(pod), pod.Spec.NodeName)
	delete(c.assumed, key)
}

// assume counts p on node before the API has the binding.
func (c *clusterState) assume(p *podInfo, node string) {
	c.place(p, node)
	c.assumed[p.key] = true
}

// forget undoes assume, when the binding failed.
func (c *clusterState) forget(key string) {
	if c.assumed[key] {
		c.removePod(key)
	}
}

func (c *clusterState) place(p *podInfo, node string) {
	c.removePod(p.key)
	c.info(node).addPod(p)
	c.podNode[p.key] = node
	if p.hasAffinity() {
		c.withAffinity[p.key] = p
	}
}

func (c *clusterState) removePod(key string) {
	delete(c.assumed, key)
	name, ok := c.podNode[key]
	if !ok {
		return
	}
	delete(c.podNode, key)
	delete(c.withAffinity, key)
	n := c.nodes[name]
	if n == nil {
		return
	}
	if p := n.pods[key]; p != nil {
		n.removePod(p)
	}
	if n.node == nil && len(n.pods) == 0 {
		delete(c.nodes, name)
	}
}
