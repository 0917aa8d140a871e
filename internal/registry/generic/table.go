package generic

import (
	"context"
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apiserver/pkg/registry/rest"
)

// Column is one column of `kubectl get`: Priority 1 columns show only with -o wide.
type Column struct {
	Name, Type, Description string
	Priority                int32
	Cell                    func(obj runtime.Object) any
}

// Table converts objects to kubectl's tables: NAME first, then the
// columns given, with AGE placed where an "AGE" column names it (at the end
// if none does).
type Table struct{ cols []Column }

// NewTable returns a TableConvertor with the given columns.
func NewTable(cols ...Column) *Table {
	hasAge := false
	for _, c := range cols {
		if c.Name == "Age" {
			hasAge = true
		}
	}
	if !hasAge {
		cols = append(cols, AgeColumn())
	}
	return &Table{cols: cols}
}

// AgeColumn is kubectl's AGE.
func AgeColumn() Column {
	return Column{Name: "Age", Type: "string", Description: "Time since creation", Cell: func(obj runtime.Object) any {
		return Age(mustMeta(obj).GetCreationTimestamp())
	}}
}

// Age formats a timestamp as kubectl does ("5m", "3d").
func Age(ts metav1.Time) string {
	if ts.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(time.Since(ts.Time))
}

func (t *Table) ConvertToTable(ctx context.Context, obj runtime.Object, _ runtime.Object) (*metav1.Table, error) {
	table := &metav1.Table{ColumnDefinitions: []metav1.TableColumnDefinition{
		{Name: "Name", Type: "string", Format: "name", Description: "Name must be unique within a namespace."},
	}}
	for _, c := range t.cols {
		table.ColumnDefinitions = append(table.ColumnDefinitions, metav1.TableColumnDefinition{Name: c.Name, Type: c.Type, Description: c.Description, Priority: c.Priority})
	}
	row := func(o runtime.Object) (metav1.TableRow, error) {
		m, ok := o.(metav1.Object)
		if !ok {
			return metav1.TableRow{}, fmt.Errorf("%T has no object metadata", o)
		}
		r := metav1.TableRow{Cells: []any{m.GetName()}, Object: runtime.RawExtension{Object: o}}
		for _, c := range t.cols {
			r.Cells = append(r.Cells, c.Cell(o))
		}
		return r, nil
	}
	if meta.IsListType(obj) {
		err := meta.EachListItem(obj, func(o runtime.Object) error {
			r, err := row(o)
			table.Rows = append(table.Rows, r)
			return err
		})
		if err != nil {
			return nil, err
		}
		if l, err := meta.ListAccessor(obj); err == nil {
			table.ResourceVersion = l.GetResourceVersion()
			table.Continue = l.GetContinue()
			table.RemainingItemCount = l.GetRemainingItemCount()
		}
		return table, nil
	}
	r, err := row(obj)
	if err != nil {
		return nil, err
	}
	table.Rows = append(table.Rows, r)
	if m, ok := obj.(metav1.Object); ok {
		table.ResourceVersion = m.GetResourceVersion()
	}
	return table, nil
}

var _ rest.TableConvertor = &Table{}

func qualified(group, resource string) schema.GroupResource {
	return schema.GroupResource{Group: group, Resource: resource}
}
