// Package apiserver is `duet server`: the Kubernetes API on
// k8s.io/apiserver, stored in etcd (embedded by default), with Duet's
// registries and controllers.
package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/endpoints/openapi"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/features"
	registrygeneric "k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	utilcompatibility "k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/duet-net/duet/internal/admission/defaulttolerations"
	"github.com/duet-net/duet/internal/admission/namespacelifecycle"
	"github.com/duet-net/duet/internal/admission/serviceaccount"
	"github.com/duet-net/duet/internal/alloc"
	netv1alpha1 "github.com/duet-net/duet/internal/apis/networking/v1alpha1"
	generatedopenapi "github.com/duet-net/duet/internal/apiserver/openapi"
	"github.com/duet-net/duet/internal/etcdstore"
	"github.com/duet-net/duet/internal/netaddr"
	"github.com/duet-net/duet/internal/nodegraph"
	"github.com/duet-net/duet/internal/pki"
	registryapps "github.com/duet-net/duet/internal/registry/apps"
	"github.com/duet-net/duet/internal/registry/clustercidr"
	"github.com/duet-net/duet/internal/registry/coordination"
	registrycore "github.com/duet-net/duet/internal/registry/core"
	"github.com/duet-net/duet/internal/registry/discovery"
	"github.com/duet-net/duet/internal/registry/networking"
	"github.com/duet-net/duet/internal/registry/podconfig"
	"github.com/duet-net/duet/internal/registry/service"
	"github.com/duet-net/duet/internal/satoken"
)

// setServerFeatures turns off the k8s.io/apiserver features whose memory
// and CPU Duet cannot afford on a small machine:
//
//   - ListFromCacheSnapshot keeps a copy-on-write snapshot of every watch
//     cache for each write until etcd's next compaction: with 150,000 Pods
//     that was a tenth of the heap. Lists at a past resourceVersion are
//     then served by etcd, as before Kubernetes 1.34.
//   - DetectCacheInconsistency lists every resource from both etcd and the
//     watch cache every five minutes only to compare digests (it reports,
//     it repairs nothing): with 150,000 Pods each round decodes them all
//     again and stalls requests on two cores.
func setServerFeatures() error {
	err := utilfeature.DefaultMutableFeatureGate.SetFromMap(map[string]bool{
		string(features.ListFromCacheSnapshot):    false,
		string(features.DetectCacheInconsistency): false,
	})
	if err != nil {
		return fmt.Errorf("setting API server features: %w", err)
	}
	return nil
}

// storageEncodings stores every resource as protobuf except Services.
// Protobuf objects are a third smaller in etcd and decode into the watch
// cache with exactly sized slices, where JSON decoding leaves the slack of
// every grown slice: with 150,000 Pods that is hundreds of megabytes.
// Services stay JSON: core/v1's protobuf form has no field for the 1.16
// spec.ipFamily that Duet keeps; so do Duet's own types, which have no
// protobuf form. Either encoding is read back whatever the
// setting, so data written by earlier versions stays readable.
type storageEncodings struct {
	registrygeneric.RESTOptionsGetter
	protobuf runtime.Codec
}

func (e storageEncodings) GetRESTOptions(resource schema.GroupResource, example runtime.Object) (registrygeneric.RESTOptions, error) {
	opts, err := e.RESTOptionsGetter.GetRESTOptions(resource, example)
	if err != nil || resource == (schema.GroupResource{Resource: "services"}) || resource.Group == netv1alpha1.GroupName {
		return opts, err
	}
	cfg := *opts.StorageConfig
	cfg.Codec = e.protobuf
	opts.StorageConfig = &cfg
	return opts, nil
}

// protobufStorageCodec encodes versions as protobuf and decodes any
// encoding, like the storage codecs of Kubernetes' own API server.
func protobufStorageCodec(versions []schema.GroupVersion) (runtime.Codec, error) {
	info, ok := runtime.SerializerInfoForMediaType(Codecs.SupportedMediaTypes(), runtime.ContentTypeProtobuf)
	if !ok {
		return nil, errors.New("no protobuf serializer for storage")
	}
	return Codecs.CodecForVersions(info.Serializer, Codecs.UniversalDeserializer(), schema.GroupVersions(versions), runtime.InternalGroupVersioner), nil
}

// storagePrefix is the etcd key prefix of every API object.
const storagePrefix = "/registry"

// Server is a prepared `duet server`: credentials written, storage and
// APIs installed, ready to Run.
type Server struct {
	cfg *Config
	// dropDeps are the leader's, for removing a family (familydrop.go).
	dropDeps atomic.Pointer[dropDeps]
	// stopControllers stops the controllers the post-start hook started
	// (it sets it).
	stopControllers atomic.Pointer[context.CancelFunc]
	generic         *genericapiserver.GenericAPIServer
	etcd            *EmbeddedEtcd
	Kubeconfig      string
	URL             string
	log             *slog.Logger

	serviceRanges map[netaddr.Family]*alloc.ServiceRange
	ipStore       *service.IPAddressStore
	coreStorage   map[string]restStorage
	port          int
	etcdServers   []string
	// etcdClient keeps the allocation records: IPAddress objects, and those
	// that are not API objects (node ports, node CIDRs, LoadBalancer IPs).
	etcdClient *clientv3.Client
	// storageCodec encodes objects as the registries store them in etcd
	// (all but Services, see storageEncodings).
	storageCodec runtime.Codec
	nodePorts    *alloc.PortRange
	// controllersDone is closed once the leader-elected controllers have
	// stopped and released their lease.
	controllersDone chan struct{}
	// lock is the flock on --data-dir/lock, held until the process ends.
	lock *os.File
	// ca is the cluster CA, shared by every replica.
	ca *pki.CA
	// agents is how pods' exec, attach, port-forward and logs reach agents.
	agents registrycore.AgentConnection
	// tokenIssuer signs ServiceAccount tokens.
	tokenIssuer *satoken.Issuer
	// nodeGraph tells which Secrets, ConfigMaps and ServiceAccounts each
	// node's pods refer to, for the node authorizer.
	nodeGraph *nodegraph.Graph
	// cluster serves the servers that join this one's etcd cluster.
	cluster clusterState
	// quorum tells whether etcd can commit writes.
	quorum *quorumMonitor
	// live holds the cluster's ranges as objects (liveranges.go).
	live *liveRanges
}

// New prepares a server: etcd, credentials, the kubeconfig, the API. It
// gives up with ctx's error as soon as ctx is done (a signal), whatever
// step it is at.
func New(ctx context.Context, cfg *Config, log *slog.Logger) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, controllersDone: make(chan struct{})}
	if err := setServerFeatures(); err != nil {
		return nil, err
	}
	if cfg.MemoryLimit > 0 {
		// The watch caches are most of the heap and live for good: with
		// the default GOGC the heap grows to twice them before a
		// collection. A limit makes the collector run before that.
		debug.SetMemoryLimit(cfg.MemoryLimit)
		log.Info("memory limit", "bytes", cfg.MemoryLimit)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating --data-dir: %w", err)
	}
	// One server per data directory: its etcd, credentials and kubeconfig
	// are this server's alone.
	if s.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if s.etcd != nil {
				s.etcd.Close()
			}
			if s.etcdClient != nil {
				s.etcdClient.Close()
			}
			s.lock.Close()
		}
	}()

	etcdServers := cfg.EtcdServers
	if len(etcdServers) == 0 {
		if s.etcd, err = s.startEtcd(ctx); err != nil {
			return nil, err
		}
		etcdServers = []string{s.etcd.ClientURL}
	}
	s.etcdServers = etcdServers

	pkiDir := filepath.Join(cfg.DataDir, "pki")
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, err
	}
	log.Info("connecting to etcd", "servers", etcdServers)
	ca, err := sharedCA(ctx, etcdServers, pkiDir)
	if err != nil {
		return nil, err
	}
	s.ca = ca
	if err := recordRanges(ctx, etcdServers, cfg); err != nil {
		return nil, err
	}
	saKey, err := sharedServiceAccountKey(ctx, etcdServers)
	if err != nil {
		return nil, err
	}
	if s.tokenIssuer, err = satoken.NewIssuer(saKey, satoken.DefaultIssuer); err != nil {
		return nil, err
	}
	if s.etcd != nil {
		if s.cluster.secret, err = sharedJoinSecret(ctx, etcdServers); err != nil {
			return nil, err
		}
		if err := s.writeJoinToken(); err != nil {
			return nil, err
		}
	}

	listener, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress.String(), strconv.Itoa(cfg.SecurePort)))
	if err != nil {
		return nil, fmt.Errorf("listening on --bind-address %s --secure-port %d: %w", cfg.BindAddress, cfg.SecurePort, err)
	}
	port := listener.Addr().(*net.TCPAddr).Port
	s.port = port
	host := cfg.BindAddress.String()
	if cfg.BindAddress.IsUnspecified() {
		host = "127.0.0.1"
	}
	s.URL = "https://" + net.JoinHostPort(host, strconv.Itoa(port))

	hosts := []string{"localhost", "127.0.0.1", "::1", host}
	if hn, err := os.Hostname(); err == nil {
		hosts = append(hosts, hn)
	}
	if ip := firstServiceIP(cfg); ip != "" {
		hosts = append(hosts, ip, "kubernetes", "kubernetes.default", "kubernetes.default.svc")
	}
	serving, err := ca.Issue("duet-apiserver", nil, hosts, true)
	if err != nil {
		return nil, err
	}
	if s.agents, err = agentConnection(ca); err != nil {
		return nil, err
	}
	// With the CA in the chain, a joining server can check it against
	// the hash in its join token.
	serving.CertPEM = append(serving.CertPEM, ca.ChainPEM()...)
	servingCert, servingKey := filepath.Join(pkiDir, "apiserver.crt"), filepath.Join(pkiDir, "apiserver.key")
	if err := serving.WriteFiles(servingCert, servingKey); err != nil {
		return nil, err
	}

	config := genericapiserver.NewConfig(Codecs)
	config.LongRunningFunc = longRunning
	// Watches (every agent holds several) end when the server stops,
	// after at most this long: without it the HTTP server's shutdown
	// waits out its whole timeout (a minute) for them, and a restart,
	// such as the upstream way of adding or dropping a family, takes
	// that long. Clients re-watch from another replica or this one's
	// successor, from their resource version.
	config.ShutdownWatchTerminationGracePeriod = 2 * time.Second
	secure := genericoptions.NewSecureServingOptions()
	secure.Listener = listener
	secure.BindAddress = cfg.BindAddress
	secure.BindPort = port
	secure.ServerCert.CertKey = genericoptions.CertKey{CertFile: servingCert, KeyFile: servingKey}
	if err := secure.WithLoopback().ApplyTo(&config.SecureServing, &config.LoopbackClientConfig); err != nil {
		return nil, fmt.Errorf("configuring serving: %w", err)
	}
	config.ExternalAddress = net.JoinHostPort(host, strconv.Itoa(port))
	clientCA, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", ca.CertFile)
	if err != nil {
		return nil, fmt.Errorf("loading the client CA: %w", err)
	}
	// The TLS handshake asks for client certificates only with a client CA.
	config.SecureServing.ClientCA = clientCA
	config.Authentication.Authenticator = newAuthenticator(ca.Cert, s.cluster.withJoin(
		satoken.NewAuthenticator(&saKey.PublicKey, satoken.DefaultIssuer, []string{satoken.DefaultIssuer}, storageLookup{s})))
	s.nodeGraph = nodegraph.New()
	config.Authorization.Authorizer = authorizeJoin(newAuthorizer(s.nodeGraph))
	config.LoopbackClientConfig.ContentType = runtime.ContentTypeJSON
	genericapiserver.AuthorizeClientBearerToken(config.LoopbackClientConfig, &config.Authentication, &config.Authorization)
	// The getters are bound once the APIs are installed, before serving.
	config.AdmissionControl = admission.NewChainHandler(
		namespacelifecycle.New(func(ctx context.Context, name string) (*corev1.Namespace, error) {
			return namespacelifecycle.FromStorage(s.coreStorage["namespaces"].(rest.Getter))(ctx, name)
		}),
		defaulttolerations.New(s.cfg.NodeHealth.NotReadyTolerationSeconds, s.cfg.NodeHealth.UnreachableTolerationSeconds),
		&nodeRestriction{getPod: func(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
			obj, err := s.coreStorage["pods"].(rest.Getter).Get(genericapirequest.WithNamespace(ctx, namespace), name, &metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return obj.(*corev1.Pod), nil
		}},
		serviceaccount.New(func(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
			return serviceaccount.FromStorage(s.coreStorage[podconfig.ServiceAccounts].(rest.Getter))(ctx, namespace, name)
		}, &serviceaccount.TokenVolume{}),
	)
	config.EffectiveVersion = servedVersion{utilcompatibility.DefaultBuildEffectiveVersion()}

	namer := openapi.NewDefinitionNamer(OpenAPIScheme)
	config.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(generatedopenapi.GetOpenAPIDefinitions, namer)
	config.OpenAPIConfig.Info.Title = "Duet"
	config.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(generatedopenapi.GetOpenAPIDefinitions, namer)
	config.OpenAPIV3Config.Info.Title = "Duet"

	storedVersions := []schema.GroupVersion{corev1.SchemeGroupVersion, discoveryv1.SchemeGroupVersion, coordinationv1.SchemeGroupVersion, networkingv1.SchemeGroupVersion, appsv1.SchemeGroupVersion, netv1alpha1.SchemeGroupVersion}
	jsonCodec := Codecs.LegacyCodec(storedVersions...)
	if s.storageCodec, err = protobufStorageCodec(storedVersions); err != nil {
		return nil, err
	}
	etcdOpts := genericoptions.NewEtcdOptions(storagebackend.NewDefaultConfig(storagePrefix, jsonCodec))
	etcdOpts.StorageConfig.Transport.ServerList = etcdServers
	// Compacting every minute rather than every five keeps etcd's history
	// of a busy cluster small: etcd maps its whole database file into
	// memory, so the history of 150,000 Pod writes between compactions
	// was a quarter of the server's resident memory. Watchers never
	// notice: clients watch the watch cache, not etcd.
	etcdOpts.StorageConfig.CompactionInterval = time.Minute
	if err := etcdOpts.ApplyTo(config); err != nil {
		return nil, fmt.Errorf("configuring etcd: %w", err)
	}
	config.RESTOptionsGetter = storageEncodings{RESTOptionsGetter: config.RESTOptionsGetter, protobuf: s.storageCodec}

	if err := s.prepareQuorum(config); err != nil {
		return nil, err
	}

	client, err := kubernetes.NewForConfig(config.LoopbackClientConfig)
	if err != nil {
		return nil, err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	completed := config.Complete(factory)
	generic, err := completed.New("duet-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return nil, fmt.Errorf("building the API server: %w", err)
	}
	s.generic = generic
	if err := s.installCluster(); err != nil {
		return nil, err
	}

	if err := s.installAPIs(ctx, completed); err != nil {
		return nil, err
	}

	admin, err := ca.Issue("duet-admin", []string{"system:masters"}, nil, false)
	if err != nil {
		return nil, err
	}
	s.Kubeconfig = filepath.Join(cfg.DataDir, "admin.kubeconfig")
	if err := pki.WriteKubeconfig(s.Kubeconfig, s.URL, ca.CertFile, "duet", "duet-admin", admin); err != nil {
		return nil, fmt.Errorf("writing %s: %w", s.Kubeconfig, err)
	}

	if err := generic.AddPostStartHook("duet-bootstrap", func(ctx genericapiserver.PostStartHookContext) error {
		return s.bootstrap(ctx, ctx.LoopbackClientConfig)
	}); err != nil {
		return nil, err
	}
	if err := generic.AddPostStartHook("duet-ranges", s.startRanges); err != nil {
		return nil, err
	}
	if err := generic.AddPostStartHook("duet-controllers", s.startControllers); err != nil {
		return nil, err
	}
	// The controllers stop, and give up the leader lease, while the API
	// still serves (the handlers close only after pre-shutdown hooks):
	// a replica or this server's successor then leads at once, not after
	// the lease expires.
	if err := generic.AddPreShutdownHook("duet-release-leadership", func() error {
		if stop := s.stopControllers.Load(); stop != nil {
			(*stop)()
			select {
			case <-s.controllersDone:
			case <-time.After(5 * time.Second):
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) installAPIs(ctx context.Context, completed genericapiserver.CompletedConfig) error {
	optsGetter := completed.RESTOptionsGetter

	var err error
	s.etcdClient, err = clientv3.New(clientv3.Config{Endpoints: s.etcdServers, DialTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("connecting to etcd for allocation records: %w", err)
	}
	ipStore, err := service.NewIPAddressStore(s.etcdClient, storagePrefix+"/"+networkingv1.GroupName+"/ipaddresses/", s.storageCodec)
	if err != nil {
		return err
	}
	svcCfg := service.Config{Ranges: s.cfg.ServiceRanges, DualStack: s.cfg.DualStack}
	ranges := map[netaddr.Family]*alloc.ServiceRange{}
	for i, p := range s.cfg.ServiceRanges {
		r, err := alloc.NewServiceRange(p, alloc.ServiceRangeOptions{Primary: i == 0, Store: ipStore})
		if err != nil {
			return err
		}
		// Learn what earlier runs and other replicas allocated; the watch
		// cache answers only once it has loaded.
		var syncErr error
		err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			syncErr = r.Sync(ctx)
			return syncErr == nil, nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("loading cluster IP allocations: %w", context.Cause(ctx))
			}
			return fmt.Errorf("loading cluster IP allocations: %w", syncErr)
		}
		ranges[r.Family()] = r
	}
	allocs, err := service.NewAllocators(svcCfg, ranges)
	if err != nil {
		return err
	}
	portStore, err := etcdstore.New(s.etcdClient, "/duet/allocations/nodeports/")
	if err != nil {
		return err
	}
	ports, err := alloc.NewPortRange(s.cfg.NodePortBase, s.cfg.NodePortEnd, portStore)
	if err != nil {
		return fmt.Errorf("--service-node-port-range: %w", err)
	}
	if err := ports.Sync(ctx); err != nil {
		return fmt.Errorf("loading node port allocations: %w", err)
	}
	allocs.SetNodePorts(ports)
	s.nodePorts = ports
	s.serviceRanges, s.ipStore = ranges, ipStore
	s.live = newLiveRanges(s.cfg, allocs, ipStore, ranges)
	s.live.removeFamilies = s.removeFamiliesNow
	netStorage, err := networking.NewStorage(Scheme, optsGetter, s.live.networkingOptions(s.cfg))
	if err != nil {
		return err
	}

	coreStorage, err := registrycore.NewStorage(Scheme, optsGetter, registrycore.WithClusterPodFamilies(s.live.podFamilies))
	if err != nil {
		return err
	}
	svcStorage, err := service.NewStorage(Scheme, optsGetter, allocs)
	if err != nil {
		return err
	}
	for k, v := range svcStorage {
		coreStorage[k] = v
	}
	podConfig, err := podconfig.NewStorage(Scheme, optsGetter, s.tokenOptions())
	if err != nil {
		return err
	}
	maps.Copy(coreStorage, podConfig)
	if err := registrycore.AddPodStreams(coreStorage, s.agents); err != nil {
		return err
	}
	if err := registrycore.AddProxies(coreStorage, s.agents); err != nil {
		return err
	}
	s.coreStorage = coreStorage
	legacy := genericapiserver.NewDefaultAPIGroupInfo("", Scheme, ParameterCodec, Codecs)
	legacy.VersionedResourcesStorageMap["v1"] = coreStorage
	if err := s.generic.InstallLegacyAPIGroup(genericapiserver.DefaultLegacyAPIPrefix, &legacy); err != nil {
		return fmt.Errorf("installing core/v1: %w", err)
	}

	var groups []*genericapiserver.APIGroupInfo
	for _, g := range []struct {
		gv  schema.GroupVersion
		new func() (map[string]restStorage, error)
	}{
		{discoveryv1.SchemeGroupVersion, func() (map[string]restStorage, error) { return discovery.NewStorage(Scheme, optsGetter) }},
		{coordinationv1.SchemeGroupVersion, func() (map[string]restStorage, error) { return coordination.NewStorage(Scheme, optsGetter) }},
		{networkingv1.SchemeGroupVersion, func() (map[string]restStorage, error) { return netStorage, nil }},
		{appsv1.SchemeGroupVersion, func() (map[string]restStorage, error) { return registryapps.NewStorage(Scheme, optsGetter) }},
		{netv1alpha1.SchemeGroupVersion, func() (map[string]restStorage, error) {
			return clustercidr.NewStorage(Scheme, optsGetter, s.live.clusterCIDROptions(s.cfg))
		}},
	} {
		st, err := g.new()
		if err != nil {
			return err
		}
		info := genericapiserver.NewDefaultAPIGroupInfo(g.gv.Group, Scheme, metav1.ParameterCodec, Codecs)
		info.VersionedResourcesStorageMap[g.gv.Version] = st
		groups = append(groups, &info)
	}
	if err := s.generic.InstallAPIGroups(groups...); err != nil {
		return fmt.Errorf("installing API groups: %w", err)
	}
	return nil
}

// Run serves until ctx is done.
func (s *Server) Run(ctx context.Context) error {
	// Deferred first, so released last: after etcd has closed its files.
	defer s.lock.Close()
	if s.etcd != nil {
		defer s.etcd.Close()
		go func() {
			select {
			case err := <-s.etcd.Err():
				s.log.Error("embedded etcd failed", "err", err)
			case <-s.etcd.Stopped():
				s.log.Error("embedded etcd stopped: was this server removed from its cluster? (duet server --leave, or a member remove elsewhere)")
			case <-ctx.Done():
			}
		}()
	}
	err := s.generic.PrepareRun().RunWithContext(ctx)
	// Release the leader lease before exiting, so that a restarted or
	// another replica takes over at once instead of after it expires.
	select {
	case <-s.controllersDone:
	case <-time.After(5 * time.Second):
	}
	return err
}

func firstServiceIP(cfg *Config) string {
	if len(cfg.ServiceRanges) == 0 {
		return ""
	}
	p := cfg.ServiceRanges[0]
	return p.Addr().Next().String()
}
