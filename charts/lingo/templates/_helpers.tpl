{{/* Chart name, or nameOverride. */}}
{{- define "lingo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources (Deployment, Service, ...), at most 63 characters.
The Service has this name, and LINGO_PEER_SERVICE points at it.
*/}}
{{- define "lingo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "lingo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "lingo.labels" -}}
helm.sh/chart: {{ include "lingo.chart" . }}
{{ include "lingo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the lingo pods. */}}
{{- define "lingo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lingo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the ServiceAccount the pods run as. */}}
{{- define "lingo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lingo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "lingo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
A duration setting as env text: strings (Go durations like 30s, 1m) as they are, numbers as whole
seconds (helm reads YAML numbers as floats, which would otherwise print as 3e+01).
*/}}
{{- define "lingo.duration" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: longer than lingo's own drain grace. */}}
{{- define "lingo.terminationGracePeriodSeconds" -}}
{{- $grace := add (int64 .Values.config.shutdownDelaySeconds) (int64 .Values.config.shutdownGraceSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace 15 }}
{{- else }}
{{- $period := int64 .Values.terminationGracePeriodSeconds }}
{{- if le $period $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be larger than config.shutdownDelaySeconds + config.shutdownGraceSeconds (%d), or Kubernetes kills lingo while it drains" $period $grace) }}
{{- end }}
{{- $period }}
{{- end }}
{{- end }}

{{/* MESSENGER_URLS: the streams as a comma list of 'REQUESTS|RESPONSES[|MAX_HANDLERS]'. */}}
{{- define "lingo.messengerUrls" -}}
{{- $streams := list }}
{{- range .Values.messenger.streams }}
{{- $parts := list .requests .responses }}
{{- if .maxHandlers }}
{{- $parts = append $parts (int64 .maxHandlers | toString) }}
{{- end }}
{{- $streams = append $streams (join "|" $parts) }}
{{- end }}
{{- join "," $streams }}
{{- end }}

{{/* Env of a server URL taken from an existing Secret or from a value; nothing when neither is set. */}}
{{- define "lingo.serverUrlEnv" -}}
{{- if .server.existingSecret.name }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .server.existingSecret.name }}
      key: {{ .server.existingSecret.key }}
{{- else if .server.url }}
- name: {{ .env }}
  value: {{ .server.url | quote }}
{{- end }}
{{- end }}
