package telemetry

// IEEE 11073-10101 reference IDs of the observations in the default schemas
// of the device protocol. Deployments may add others in their schema file.
const (
	CodeSpO2      = "MDC_PULS_OXIM_SAT_O2"
	CodeSpO2Pulse = "MDC_PULS_OXIM_PULS_RATE"
	CodeSys       = "MDC_PRESS_BLD_NONINV_SYS"
	CodeDia       = "MDC_PRESS_BLD_NONINV_DIA"
	CodeMean      = "MDC_PRESS_BLD_NONINV_MEAN"
	CodeBPPulse   = "MDC_PULS_RATE_NON_INV"
	CodeGlucose   = "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"
	CodeTemp      = "MDC_TEMP_BODY"
	CodeWeight    = "MDC_MASS_BODY_ACTUAL"
	CodeECG       = "MDC_ECG_ELEC_POTL_II"
)
