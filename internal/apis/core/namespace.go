package core

// NamespaceFinalizer is the metadata finalizer the Namespace store gives
// every Namespace, and the namespace controller removes once it has
// deleted what a deleted Namespace contains. It is part of Duet's API, so
// both the server and its client-side controller take it from here.
const NamespaceFinalizer = "duet.dev/namespace-contents"
