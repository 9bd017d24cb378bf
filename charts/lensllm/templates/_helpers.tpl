{{/* Names, labels, images and RBAC rules shared by the templates. */}}

{{- define "lensllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of every object; object names are capped at 63 characters (DNS labels). */}}
{{- define "lensllm.fullname" -}}
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

{{- define "lensllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lensllm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lensllm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "lensllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "lensllm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lensllm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image tags default to appVersion: the operator and runner images are built from the same commit. */}}
{{- define "lensllm.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lensllm.runnerImage" -}}
{{- printf "%s:%s" .Values.runner.image.repository (default .Chart.AppVersion .Values.runner.image.tag) }}
{{- end }}

{{/*
The operator's RBAC rules, read from rbac/rules.yaml (the one list, with a reason per rule).
Used for the ClusterRole and for each namespaced Role alike.
*/}}
{{- define "lensllm.rbacRules" -}}
{{- range (.Files.Get "rbac/rules.yaml" | fromYaml).rules }}
# {{ .reason }}
{{- with .exception }}
# Exception: {{ . }}
{{- end }}
- apiGroups: {{ toJson .apiGroups }}
  resources: {{ toJson .resources }}
  verbs: {{ toJson .verbs }}
{{- end }}
{{- end }}

{{/* The schema cannot compare two fields: refuse a port clash here, before the pod crash-loops. */}}
{{- define "lensllm.validatePorts" -}}
{{- if eq (int .Values.metrics.port) (int .Values.liveness.port) }}
{{- fail (printf "metrics.port and liveness.port must differ (both are %d)" (int .Values.metrics.port)) }}
{{- end }}
{{- end }}
