package webview

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// Limit is a clinical alert band of one measurement: a value below Low or
// above High is shown highlighted. A nil bound is no bound.
type Limit struct {
	Low  *float64 `yaml:"low" json:"low,omitempty"`
	High *float64 `yaml:"high" json:"high,omitempty"`
}

// Alerts are the clinical alert thresholds of the web view, by measurement
// name (see [Measurements]): the YAML key `web_alerts` of the broker. A
// measurement given here replaces its default band whole (both bounds); one
// left out keeps its default ([DefaultAlerts]); `{}` turns its alerts off.
//
// These are clinical thresholds, chosen by the care team, not the schema's
// possible ranges: a value outside a schema range never reaches the cloud,
// while an SpO2 of 88 % is a real reading that calls for attention.
type Alerts map[string]Limit

// Measurement is one value the web view shows: its configuration name, the
// record codes that carry it, the label and unit shown, and whether it
// takes alert thresholds.
type Measurement struct {
	Name  string
	Codes []string
	Label string
	Unit  string
}

// Measurements are the values the web view knows, in display order.
var Measurements = []Measurement{
	{"spo2", []string{"MDC_PULS_OXIM_SAT_O2"}, "SpO2", "%"},
	{"pulse", []string{"MDC_PULS_OXIM_PULS_RATE", "MDC_PULS_RATE_NON_INV"}, "Pulse", "/min"},
	{"systolic", []string{"MDC_PRESS_BLD_NONINV_SYS"}, "Systolic", "mmHg"},
	{"diastolic", []string{"MDC_PRESS_BLD_NONINV_DIA"}, "Diastolic", "mmHg"},
	{"mean", []string{"MDC_PRESS_BLD_NONINV_MEAN"}, "Mean", "mmHg"},
	{"glucose", []string{"MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"}, "Glucose", "mg/dL"},
	{"temp", []string{"MDC_TEMP_BODY"}, "Temp", "°C"},
	{"weight", []string{"MDC_MASS_BODY_ACTUAL"}, "Weight", "kg"},
}

func bound(v float64) *float64 { return &v }

// DefaultAlerts are the thresholds used for a measurement the configuration
// does not name: common adult home-monitoring bands (SpO2 below 92 %, pulse
// outside 50..120 /min, systolic outside 90..160 mmHg, diastolic above 100,
// glucose outside 70..250 mg/dL, temperature outside 35..38 °C). Mean
// pressure and weight have none.
func DefaultAlerts() Alerts {
	return Alerts{
		"spo2":      {Low: bound(92)},
		"pulse":     {Low: bound(50), High: bound(120)},
		"systolic":  {Low: bound(90), High: bound(160)},
		"diastolic": {High: bound(100)},
		"glucose":   {Low: bound(70), High: bound(250)},
		"temp":      {Low: bound(35), High: bound(38)},
	}
}

// Effective returns the defaults with a's measurements replacing theirs.
func (a Alerts) Effective() Alerts {
	out := DefaultAlerts()
	for k, v := range a {
		out[k] = v
	}
	return out
}

// Validate reports every problem of a at once, each naming its key under
// web_alerts.
func (a Alerts) Validate() error {
	var errs []error
	names := make([]string, 0, len(Measurements))
	for _, m := range Measurements {
		names = append(names, m.Name)
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		l := a[k]
		if !slices.Contains(names, k) {
			errs = append(errs, fmt.Errorf("web_alerts.%s: unknown measurement (want one of %s)", k, strings.Join(names, ", ")))
			continue
		}
		for _, b := range []struct {
			name string
			v    *float64
		}{{"low", l.Low}, {"high", l.High}} {
			if b.v != nil && (math.IsNaN(*b.v) || math.IsInf(*b.v, 0)) {
				errs = append(errs, fmt.Errorf("web_alerts.%s.%s: not a finite number", k, b.name))
			}
		}
		if l.Low != nil && l.High != nil && !(*l.Low < *l.High) {
			errs = append(errs, fmt.Errorf("web_alerts.%s: low %g is not below high %g", k, *l.Low, *l.High))
		}
	}
	return errors.Join(errs...)
}
