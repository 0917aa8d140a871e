package apps

import (
	"context"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	registry "github.com/duet-net/duet/internal/registry/generic"
)

// The tables have kubectl's columns, in its order, wide ones last.
func TestTables(t *testing.T) {
	d := newDeployment(func(d *appsv1.Deployment) {
		d.Spec.Replicas = ptr.To[int32](3)
		d.Status = appsv1.DeploymentStatus{ReadyReplicas: 2, UpdatedReplicas: 3, AvailableReplicas: 1}
	})
	rs := &appsv1.ReplicaSet{ObjectMeta: d.ObjectMeta, Spec: appsv1.ReplicaSetSpec{Replicas: ptr.To[int32](4), Selector: d.Spec.Selector, Template: d.Spec.Template},
		Status: appsv1.ReplicaSetStatus{Replicas: 3, ReadyReplicas: 1}}
	ds := newDaemonSet()
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"role": "edge"}
	ds.Status = appsv1.DaemonSetStatus{DesiredNumberScheduled: 3, CurrentNumberScheduled: 3, NumberReady: 2, UpdatedNumberScheduled: 1, NumberAvailable: 2}
	cr := &appsv1.ControllerRevision{ObjectMeta: metav1.ObjectMeta{Name: "agent-6c8b", OwnerReferences: []metav1.OwnerReference{
		{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "agent", Controller: ptr.To(true)}}}, Revision: 2}
	image := d.Spec.Template.Spec.Containers[0].Image
	for _, tc := range []struct {
		name    string
		table   *registry.Table
		obj     runtime.Object
		columns []string
		cells   []any
	}{
		{"deployment", deploymentTable(), d, []string{"Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector"},
			[]any{"web", "2/3", int64(3), int64(1), "<unknown>", "web", image, "app=web"}},
		{"replicaset", replicaSetTable(), rs, []string{"Name", "Desired", "Current", "Ready", "Age", "Containers", "Images", "Selector"},
			[]any{"web", int64(4), int64(3), int64(1), "<unknown>", "web", image, "app=web"}},
		{"daemonset", daemonSetTable(), ds, []string{"Name", "Desired", "Current", "Ready", "Up-to-date", "Available", "Node Selector", "Age", "Containers", "Images", "Selector"},
			[]any{"agent", int64(3), int64(3), int64(2), int64(1), int64(2), "role=edge", "<unknown>", "web", "registry.k8s.io/pause:3.10", "app=web"}},
		{"controllerrevision", controllerRevisionTable(), cr, []string{"Name", "Controller", "Revision", "Age"},
			[]any{"agent-6c8b", "daemonset.apps/agent", int64(2), "<unknown>"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			table, err := tc.table.ConvertToTable(context.Background(), tc.obj, nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range table.ColumnDefinitions {
				names = append(names, c.Name)
			}
			if fmt.Sprint(names) != fmt.Sprint(tc.columns) {
				t.Errorf("columns %v, want %v", names, tc.columns)
			}
			if got := table.Rows[0].Cells; fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", tc.cells) {
				t.Errorf("cells %#v, want %#v", got, tc.cells)
			}
		})
	}
}
