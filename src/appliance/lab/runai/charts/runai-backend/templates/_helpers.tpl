{{/* The registry and path of the images, without a trailing slash. */}}
{{- define "runai-backend.registry" -}}
{{- .Values.global.image.registry | trimSuffix "/" -}}
{{- end -}}

{{/* The control plane's domain; rendering fails without it. */}}
{{- define "runai-backend.domain" -}}
{{- required "global.domain is required: the control plane's DNS name, for example runai.example.com (--set global.domain=...)" .Values.global.domain -}}
{{- end -}}

{{/* Fails on values that cannot work, with the value and what is allowed; renders nothing. */}}
{{- define "runai-backend.validate" -}}
{{- if not .Values.externalIPs -}}
{{- fail "externalIPs is required: a non-empty list of node IPs where the control plane answers on port 443" -}}
{{- end -}}
{{- if and (not .Values.nfs.server) (not .Values.storageClass) -}}
{{- fail "storage is required: set nfs.server and nfs.path, or storageClass (neither is set)" -}}
{{- end -}}
{{- if and .Values.nfs.server (not .Values.nfs.path) -}}
{{- fail (printf "nfs.path is required with nfs.server %q: the exported path, for example /export/runai" .Values.nfs.server) -}}
{{- end -}}
{{- if not (regexMatch "^[1-9][0-9]*(Mi|Gi|Ti)$" (toString .Values.postgresql.storage)) -}}
{{- fail (printf "postgresql.storage %q must be a size like 2Gi (a whole number of Mi, Gi or Ti)" (toString .Values.postgresql.storage)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z_][a-z0-9_]{0,62}$" (toString .Values.postgresql.user)) -}}
{{- fail (printf "postgresql.user %q must be a lower-case SQL name like runai" (toString .Values.postgresql.user)) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z_][a-z0-9_]{0,62}$" (toString .Values.postgresql.database)) -}}
{{- fail (printf "postgresql.database %q must be a lower-case SQL name like runai" (toString .Values.postgresql.database)) -}}
{{- end -}}
{{- if hasPrefix "http" (include "runai-backend.domain" .) -}}
{{- fail (printf "global.domain %q must be a DNS name, not a URL" .Values.global.domain) -}}
{{- end -}}
{{- end -}}

{{- define "runai-backend.labels" -}}
app.kubernetes.io/part-of: runai-backend
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Changes when the certificate, its key or CA change, so the pods roll and serve the new one. */}}
{{- define "runai-backend.tlsChecksum" -}}
{{- printf "%s\n%s\n%s" .Values.tls.cert .Values.tls.key (.Values.tls.caCert | default "") | sha256sum -}}
{{- end -}}

{{/* The NFS PersistentVolume of the database: cluster-wide, so it carries the namespace. */}}
{{- define "runai-backend.postgresqlVolume" -}}
{{- printf "runai-backend-postgresql-%s" .Release.Namespace -}}
{{- end -}}

{{/* Pod settings both Deployments share. */}}
{{- define "runai-backend.podSpec" -}}
serviceAccountName: runai-backend
nodeSelector:
  node-role.kubernetes.io/runai-system: "true"
securityContext:
  runAsNonRoot: true
  runAsUser: 65534
  runAsGroup: 65534
{{- end -}}

{{- define "runai-backend.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}
