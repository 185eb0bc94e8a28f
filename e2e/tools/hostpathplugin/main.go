// hostpathplugin: a small CSI driver for the Holdfast testbed, modelled on the
// upstream kubernetes-csi hostpath driver (whose module the Go proxy refuses to
// serve, see e2e/README.md).  Same on-disk layout as upstream:
//
//	<statedir>/<volumeID>/       a volume is a directory
//	<statedir>/<snapshotID>.snap a snapshot is a gzipped tarball of it
//	<statedir>/state.json        names, sizes and sources
//
// Controller: CreateVolume (empty, from a snapshot, or a clone), DeleteVolume,
// CreateSnapshot, DeleteSnapshot, ListSnapshots, ValidateVolumeCapabilities.
// Node: NodeGetInfo, NodePublishVolume/NodeUnpublishVolume as bind mounts.
// Filesystem volumes only; no topology, no attach, no expansion.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var version = "dev"

type volume struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	Size       int64  `json:"size"`
	Path       string `json:"path"`
	SourceKind string `json:"sourceKind,omitempty"` // "snapshot" | "volume"
	SourceID   string `json:"sourceID,omitempty"`
}

type snapshot struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"sourceVolume"`
	Size         int64     `json:"size"`
	Path         string    `json:"path"`
	CreationTime time.Time `json:"creationTime"`
}

type state struct {
	Volumes   map[string]*volume   `json:"volumes"`
	Snapshots map[string]*snapshot `json:"snapshots"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	name, nodeID, dir string
	maxVolumes        int64
	mu                sync.Mutex
	st                state
}

func newID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func (d *driver) load() error {
	d.st = state{Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}}
	b, err := os.ReadFile(filepath.Join(d.dir, "state.json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &d.st); err != nil {
		return err
	}
	if d.st.Volumes == nil {
		d.st.Volumes = map[string]*volume{}
	}
	if d.st.Snapshots == nil {
		d.st.Snapshots = map[string]*snapshot{}
	}
	return nil
}

func (d *driver) save() error {
	b, err := json.MarshalIndent(&d.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(d.dir, "state.json"))
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ---- identity

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}},
	}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// ---- controller

func ctrlCap(t csi.ControllerServiceCapability_RPC_Type) *csi.ControllerServiceCapability {
	return &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
}

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{
		ctrlCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME),
		ctrlCap(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT),
		ctrlCap(csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS),
		ctrlCap(csi.ControllerServiceCapability_RPC_CLONE_VOLUME),
	}}, nil
}

func checkCaps(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities missing")
	}
	for _, c := range caps {
		if c.GetBlock() != nil {
			return status.Error(codes.InvalidArgument, "block volumes are not supported by this driver")
		}
	}
	return nil
}

func (d *driver) volumeResp(v *volume) *csi.CreateVolumeResponse {
	r := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Size, VolumeContext: map[string]string{}}
	switch v.SourceKind {
	case "snapshot":
		r.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceID}}}
	case "volume":
		r.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceID}}}
	}
	return &csi.CreateVolumeResponse{Volume: r}
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size := req.GetCapacityRange().GetRequiredBytes()
	if size == 0 {
		size = req.GetCapacityRange().GetLimitBytes()
	}
	if size == 0 {
		size = 1 << 30
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, v := range d.st.Volumes {
		if v.Name == req.GetName() {
			if v.Size < req.GetCapacityRange().GetRequiredBytes() {
				return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with smaller size", v.Name)
			}
			return d.volumeResp(v), nil
		}
	}
	v := &volume{ID: newID(), Name: req.GetName(), Size: size}
	v.Path = filepath.Join(d.dir, v.ID)
	if err := os.MkdirAll(v.Path, 0o777); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	_ = os.Chmod(v.Path, 0o777)
	fail := func(err error) (*csi.CreateVolumeResponse, error) {
		_ = os.RemoveAll(v.Path)
		return nil, err
	}
	if src := req.GetVolumeContentSource(); src != nil {
		if s := src.GetSnapshot(); s != nil {
			snap, ok := d.st.Snapshots[s.GetSnapshotId()]
			if !ok {
				return fail(status.Errorf(codes.NotFound, "snapshot %s not found", s.GetSnapshotId()))
			}
			if snap.Size > size {
				return fail(status.Errorf(codes.OutOfRange, "snapshot size %d > requested %d", snap.Size, size))
			}
			if err := run("tar", "-C", v.Path, "-xzpf", snap.Path); err != nil {
				return fail(status.Error(codes.Internal, err.Error()))
			}
			v.SourceKind, v.SourceID = "snapshot", snap.ID
		} else if sv := src.GetVolume(); sv != nil {
			orig, ok := d.st.Volumes[sv.GetVolumeId()]
			if !ok {
				return fail(status.Errorf(codes.NotFound, "volume %s not found", sv.GetVolumeId()))
			}
			if orig.Size > size {
				return fail(status.Errorf(codes.OutOfRange, "source size %d > requested %d", orig.Size, size))
			}
			if err := run("cp", "-a", orig.Path+"/.", v.Path+"/"); err != nil {
				return fail(status.Error(codes.Internal, err.Error()))
			}
			v.SourceKind, v.SourceID = "volume", orig.ID
		}
	}
	d.st.Volumes[v.ID] = v
	if err := d.save(); err != nil {
		delete(d.st.Volumes, v.ID)
		return fail(status.Error(codes.Internal, err.Error()))
	}
	return d.volumeResp(v), nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.st.Volumes[req.GetVolumeId()]
	if !ok {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err := os.RemoveAll(v.Path); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	delete(d.st.Volumes, v.ID)
	if err := d.save(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	d.mu.Lock()
	_, ok := d.st.Volumes[req.GetVolumeId()]
	d.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	if err := checkCaps(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

func snapProto(s *snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.SourceVolume, SizeBytes: s.Size,
		CreationTime: timestamppb.New(s.CreationTime), ReadyToUse: true}
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name and source volume id are required")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.st.Snapshots {
		if s.Name == req.GetName() {
			if s.SourceVolume != req.GetSourceVolumeId() {
				return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", s.Name)
			}
			return &csi.CreateSnapshotResponse{Snapshot: snapProto(s)}, nil
		}
	}
	v, ok := d.st.Volumes[req.GetSourceVolumeId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetSourceVolumeId())
	}
	s := &snapshot{ID: newID(), Name: req.GetName(), SourceVolume: v.ID, Size: v.Size, CreationTime: time.Now().UTC()}
	s.Path = filepath.Join(d.dir, s.ID+".snap")
	if err := run("tar", "-C", v.Path, "-czf", s.Path, "."); err != nil {
		_ = os.Remove(s.Path)
		return nil, status.Error(codes.Internal, err.Error())
	}
	d.st.Snapshots[s.ID] = s
	if err := d.save(); err != nil {
		delete(d.st.Snapshots, s.ID)
		_ = os.Remove(s.Path)
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.CreateSnapshotResponse{Snapshot: snapProto(s)}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.st.Snapshots[req.GetSnapshotId()]
	if !ok {
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err := os.Remove(s.Path); err != nil && !os.IsNotExist(err) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	delete(d.st.Snapshots, s.ID)
	if err := d.save(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (d *driver) ListSnapshots(_ context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if req.GetStartingToken() != "" {
		return nil, status.Error(codes.Aborted, "pagination is not supported")
	}
	resp := &csi.ListSnapshotsResponse{}
	for _, s := range d.st.Snapshots {
		if req.GetSnapshotId() != "" && s.ID != req.GetSnapshotId() {
			continue
		}
		if req.GetSourceVolumeId() != "" && s.SourceVolume != req.GetSourceVolumeId() {
			continue
		}
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: snapProto(s)})
	}
	return resp, nil
}

// ---- node

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID, MaxVolumesPerNode: d.maxVolumes}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

func isMountPoint(p string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == p {
			return true
		}
	}
	return false
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if req.GetVolumeId() == "" || target == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id and target path are required")
	}
	if err := checkCaps([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, err
	}
	d.mu.Lock()
	v, ok := d.st.Volumes[req.GetVolumeId()]
	d.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	if isMountPoint(target) {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if err := syscall.Mount(v.Path, target, "", syscall.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind mount %s on %s: %v", v.Path, target, err)
	}
	if req.GetReadonly() {
		if err := syscall.Mount("", target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
			_ = syscall.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "remount read-only %s: %v", target, err)
		}
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	if target == "" {
		return nil, status.Error(codes.InvalidArgument, "target path missing")
	}
	for isMountPoint(target) {
		if err := syscall.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !os.IsNotExist(err) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func logCalls(ctx context.Context, req interface{}, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (interface{}, error) {
	resp, err := h(ctx, req)
	if err != nil {
		log.Printf("%s %+v -> error: %v", info.FullMethod, req, err)
	} else if !strings.Contains(info.FullMethod, "Probe") && !strings.Contains(info.FullMethod, "GetPlugin") {
		log.Printf("%s %+v -> %+v", info.FullMethod, req, resp)
	}
	return resp, err
}

func main() {
	endpoint := flag.String("endpoint", "unix:///csi/csi.sock", "CSI endpoint (unix://PATH)")
	name := flag.String("drivername", "hostpath.csi.k8s.io", "driver name")
	nodeID := flag.String("nodeid", "", "node id")
	dir := flag.String("statedir", "/csi-data-dir", "directory for volumes, snapshots and state.json")
	maxVol := flag.Int64("maxvolumespernode", 0, "limit of volumes per node (0 = none)")
	showVersion := flag.Bool("version", false, "print version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version)
		return
	}
	if *nodeID == "" {
		log.Fatal("--nodeid is required")
	}
	d := &driver{name: *name, nodeID: *nodeID, dir: *dir, maxVolumes: *maxVol}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		log.Fatal(err)
	}
	if err := d.load(); err != nil {
		log.Fatalf("load state: %v", err)
	}
	sock := strings.TrimPrefix(*endpoint, "unix://")
	if sock == *endpoint {
		log.Fatalf("endpoint must be unix://PATH, got %q", *endpoint)
	}
	_ = os.Remove(sock)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	log.Printf("hostpathplugin %s: driver %s node %s statedir %s listening on %s", version, d.name, d.nodeID, d.dir, sock)
	if err := srv.Serve(l); err != nil {
		log.Fatal(err)
	}
}
