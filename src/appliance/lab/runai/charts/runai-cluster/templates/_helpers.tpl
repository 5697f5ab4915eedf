{{- define "runai-cluster.registry" -}}
{{- .Values.global.image.registry | trimSuffix "/" -}}
{{- end -}}

{{/* The control plane's URL, checked: required, https. */}}
{{- define "runai-cluster.url" -}}
{{- $url := required "controlPlane.url is required: the control plane's URL, https://DOMAIN" .Values.controlPlane.url | trimSuffix "/" -}}
{{- if not (hasPrefix "https://" $url) -}}
{{- fail (printf "controlPlane.url %q must start with https://" $url) -}}
{{- end -}}
{{- $url -}}
{{- end -}}

{{- define "runai-cluster.labels" -}}
app.kubernetes.io/part-of: runai-cluster
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
