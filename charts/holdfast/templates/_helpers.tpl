{{- define "holdfast.labels" -}}
app.kubernetes.io/name: holdfast
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "holdfast.selector" -}}
app.kubernetes.io/name: holdfast
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The port of httpAddr; 0 lets each replica pick a free one (testbeds whose pods share
the host network), and then there are no probes and no metrics Service. */}}
{{- define "holdfast.httpPort" -}}
{{ splitList ":" .Values.httpAddr | last | int }}
{{- end -}}
