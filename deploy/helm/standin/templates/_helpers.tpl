{{/* The release's name for its objects, cut to Kubernetes' 63 characters. */}}
{{- define "standin.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "standin.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "standin.labels" -}}
{{ include "standin.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "standin.witnessSecret" -}}
{{- default (printf "%s-witness" (include "standin.fullname" .)) .Values.witness.existingSecret -}}
{{- end -}}

{{- define "standin.apiSecret" -}}
{{- default (printf "%s-api" (include "standin.fullname" .)) .Values.api.existingSecret -}}
{{- end -}}

{{/* `standin` as the pod runs it, for the probes. */}}
{{- define "standin.probe" -}}
- /usr/bin/standin
- --config
- /etc/standin/standin.yaml
- --timeout
- 3s
- probe
{{- end -}}
