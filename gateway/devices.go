package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vitalgate/vitalgate/gateway/internal/config"
	"github.com/vitalgate/vitalgate/gateway/internal/inventory"
	"github.com/vitalgate/vitalgate/internal/cli"
)

// devicesUsage is the synopsis of `gateway devices`.
const devicesUsage = "usage: gateway devices [--config FILE] [--data DIR] [--json]"

// devicesCmd is `gateway devices`: the device inventory the gateway keeps
// in its data directory (written every few seconds while it runs and when
// it stops), one device a line or as JSON. With --config, the file's
// min_firmware judges the firmware.
func devicesCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("gateway devices", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n\nThe device inventory in a gateway's data directory: model, firmware, certificate expiry,\n"+
			"last seen and verdict counts per device. The gateway writes it every few seconds and when it stops;\n"+
			"a running gateway serves it fresh on GET /devices.\n\nflags:\n", devicesUsage)
		fs.PrintDefaults()
	}
	c := config.Default()
	file := fs.String("config", "", "YAML configuration file of the gateway (for its data, inventory and min_firmware keys)")
	fs.StringVar(&c.Data, "data", c.Data, "gateway data `directory`")
	asJSON := fs.Bool("json", false, "print the devices as JSON")
	if err := cli.ParseConfig(fs, args, out, file, &c); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q; %s", fs.Arg(0), devicesUsage)
	}
	if err := inventory.CheckMinimums(c.MinFirmware); err != nil {
		return fmt.Errorf("min_firmware: %w", err)
	}
	if _, err := os.Stat(c.Data); err != nil {
		return fmt.Errorf("devices: no data directory: %w", err)
	}
	path := filepath.Join(c.Data, inventory.File)
	devs, err := inventory.Load(path, c.Inventory.MaxDevices)
	if err != nil {
		return err // names the file
	}
	list := make([]inventory.Device, len(devs))
	for i, d := range devs {
		if len(c.MinFirmware) > 0 {
			inventory.ApplyPolicy(d, c.MinFirmware)
		}
		list[i] = *d
	}
	slices.SortFunc(list, func(a, b inventory.Device) int { return strings.Compare(a.ID, b.ID) })
	if *asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	printDevices(out, list)
	fmt.Fprintf(out, "%s in %s\n", plural(len(list), "device", "devices"), path)
	return nil
}

// printDevices writes the inventory as a table.
func printDevices(out io.Writer, list []inventory.Device) {
	if len(list) == 0 {
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODEL\tFIRMWARE\tCERT EXPIRES\tLAST SEEN\tVERDICTS")
	for _, d := range list {
		fw := "-"
		if d.FW != "" {
			fw = fmt.Sprintf("%s (seq %d)", d.FW, d.FWSeq)
		}
		if d.BelowMin {
			fw += " BELOW MIN " + d.MinFirmware
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, orDash(d.Model), fw, when(d.CertNotAfter), when(d.LastSeen), verdicts(d.Verdicts))
	}
	tw.Flush()
}

// verdicts is "accepted 12, replay 1": accepted first, then by name.
func verdicts(m map[string]uint64) string {
	names := make([]string, 0, len(m))
	for k := range m {
		if k != inventory.Accepted {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	parts := []string{fmt.Sprintf("%s %d", inventory.Accepted, m[inventory.Accepted])}
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// when is an RFC 3339 time (UTC), or "-".
func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
