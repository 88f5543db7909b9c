package bench

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// baselines drives devs with msgs through the setups a user would pick
// instead of the gateway, each a child process pinned to the gateway's
// CPUs (the gateway stopped), devices over mutual TLS with the same fleet
// certificates, QoS 1 on to the cloud broker as the gateway's client, no
// payload check: the bare mochi relay, then Mosquitto with a bridge
// (skipped, with a notice, when it is not installed). The app at the cloud
// counts what arrives. Devices beyond the open-file limit less 1,000 are
// left out (baseline_devices says how many drove).
func (r *run) baselines(ctx context.Context, roots *x509.CertPool, devs []*Identity, msgs [][]Msg) error {
	if limit := int(min(r.files, 1<<20)); r.files > 0 && len(devs)+1000 > limit {
		n := max(1, limit-1000)
		devs, msgs = devs[:n], msgs[:n]
	}
	r.res.BaselineDevs = len(devs)
	cpus := r.childCPUs(r.cfg.GatewayCPUs)
	window := cmp.Or(r.cfg.RelayWindow, defaultRelayWindow)
	r.phase("starting the bare mochi relay")
	relay, err := StartMochiRelay(ctx, r.cfg.RelayBin, r.pkiDir(), r.cloud.GatewayAddr(), window, cpus)
	if err != nil {
		return err
	}
	res, err := r.throughRelay(ctx, "mochi relay", relay, roots, devs, msgs)
	if err != nil {
		return err
	}
	f := r.baselineFigures(res)
	r.res.Baseline, r.res.BaselinePerCPU, r.res.BaselineCPU = f.rate, f.perCPU, f.share
	r.res.BaselineHarnessCPU, r.res.BaselineCloudCPU = f.harness, f.cloud
	r.res.VsBaseline, r.res.VsBaselinePerCPU, r.res.BaselineUndelivered = f.vs, f.vsPerCPU, res.undelivered

	bin := FindMosquitto(r.cfg.MosquittoBin)
	if r.cfg.MosquittoBin == "off" || bin == "" {
		why := "not installed (apt-get install mosquitto, or --mosquitto-bin)"
		if r.cfg.MosquittoBin == "off" {
			why = "turned off"
		}
		r.notice("mosquitto baseline skipped: mosquitto " + why)
		return nil
	}
	r.phase("starting mosquitto with a bridge")
	mosq, err := StartMosquitto(ctx, bin, r.pkiDir(), filepath.Join(r.dir, "mosquitto"), r.cloud.GatewayAddr(), window, cpus)
	if err != nil {
		return err
	}
	if res, err = r.throughRelay(ctx, "mosquitto", mosq, roots, devs, msgs); err != nil {
		return err
	}
	f = r.baselineFigures(res)
	r.res.Mosquitto, r.res.MosquittoPerCPU, r.res.MosquittoCPU = f.rate, f.perCPU, f.share
	r.res.MosquittoHarnessCPU, r.res.MosquittoCloudCPU = f.harness, f.cloud
	r.res.VsMosquitto, r.res.VsMosquittoPerCPU, r.res.MosquittoUndelivered = f.vs, f.vsPerCPU, res.undelivered
	return nil
}

// throughRelay connects devs to the relay p, sees one message through to
// the app at the cloud, drives msgs unpaced and stops p.
func (r *run) throughRelay(ctx context.Context, name string, p *RelayProc, roots *x509.CertPool, devs []*Identity, msgs [][]Msg) (res phaseResult, err error) {
	defer stopChild(p.child, name, &err)
	d, err := r.connect(ctx, p.DeviceAddr(), roots, devs, name)
	if err != nil {
		return res, err
	}
	defer d.Close()
	if err := r.probe(ctx, d, msgs[0][0].Payload); err != nil {
		return res, fmt.Errorf("%s: %w: %s", name, err, p.Tail())
	}
	return r.drive(ctx, name, d, msgs, 0, r.sub.Count, p.Pid(), nil)
}

// probe publishes payload once from the fleet's first device and waits, at
// most 30 s, for the app to receive it: the path to the cloud works before
// the phase measures it (a bridge connects after its broker starts).
func (r *run) probe(ctx context.Context, d *Devices, payload []byte) error {
	r.phase("one message through to the cloud")
	n := r.sub.Count()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ack, err := d.clients[0].Publish(ctx, &paho.Publish{Topic: "devices/" + d.ids[0].ID + "/telemetry", QoS: 1, Payload: payload})
	if err != nil {
		return fmt.Errorf("probe message: %w", err)
	}
	if ack != nil && ack.ReasonCode >= 0x80 {
		return fmt.Errorf("probe message refused: PUBACK 0x%02x", ack.ReasonCode)
	}
	for r.sub.Count() == n {
		if ctx.Err() != nil {
			return errors.New("probe message not delivered to the cloud within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// baselineFigure is what one baseline phase adds to the result.
type baselineFigure struct {
	rate     float64 // delivered at the cloud per second
	perCPU   float64 // per CPU-second of the relay's process
	share    float64 // the relay's CPU share of the machine
	harness  float64 // this process's (fleet and app)
	cloud    float64 // the cloud broker's
	vs       float64 // validated / rate
	vsPerCPU float64 // validated per gateway CPU-second / perCPU
}

func (r *run) baselineFigures(res phaseResult) baselineFigure {
	f := baselineFigure{rate: round(res.rate, 0), share: round(res.childShare, 3),
		harness: round(res.selfShare, 3), cloud: round(res.cloudShare, 3)}
	if res.rate > 0 {
		f.vs = round(r.res.Validated/res.rate, 3)
	}
	if res.childShare > 0 {
		per := res.rate / (res.childShare * float64(max(1, r.res.NProc)))
		f.perCPU = round(per, 0)
		if per > 0 {
			f.vsPerCPU = round(r.res.PerGatewayCore/per, 3)
		}
	}
	return f
}

// notice passes line to Config.Notice, or writes it to stderr.
func (r *run) notice(line string) {
	if r.cfg.Notice != nil {
		r.cfg.Notice(line)
		return
	}
	fmt.Fprintln(os.Stderr, line)
}
