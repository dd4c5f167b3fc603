{{/*
Flow control and the API keys file of the router (docs/flow-control.md "Kubernetes and Helm").

Queue sizes and tenant limits are enforced by each router process alone, so the values take
fleet-wide figures that these helpers divide by the router's replica count, rounding up:
`router.replicas`, or `router.autoscaling.minReplicas` while the HPA is enabled (then the
share is approximate: more replicas admit more in total).
*/}}

{{/* The replica count the fleet-wide figures are divided by (at least 1). */}}
{{- define "llmsvc.routerShares" -}}
{{- $n := .Values.router.replicas | int64 -}}
{{- if .Values.router.autoscaling.enabled }}{{ $n = .Values.router.autoscaling.minReplicas | int64 }}{{ end -}}
{{- max 1 $n -}}
{{- end }}

{{/* One router's share of a fleet-wide figure: ceil(total / shares). Call with (list $ total). */}}
{{- define "llmsvc.routerShare" -}}
{{- $total := index . 1 | int64 -}}
{{- $n := include "llmsvc.routerShares" (index . 0) | int64 -}}
{{- div (add $total (sub $n 1)) $n -}}
{{- end }}

{{/* The router's flow-control flags, each only when its value is set (0 counts as set). */}}
{{- define "llmsvc.flowControlArgs" -}}
{{- $fc := .Values.router.flowControl | default dict -}}
{{- if not (kindIs "invalid" $fc.backendConcurrency) }}
- --backend-concurrency
- {{ $fc.backendConcurrency | int64 | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.saturationWaiting) }}
- --saturation-waiting
- {{ $fc.saturationWaiting | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.saturationKv) }}
- --saturation-kv
- {{ $fc.saturationKv | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.queueSize) }}
- --queue-size
- {{ include "llmsvc.routerShare" (list . $fc.queueSize) | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.queueTimeout) }}
- --queue-timeout
- {{ $fc.queueTimeout | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.holdTimeout) }}
- --hold-timeout
- {{ $fc.holdTimeout | toString | quote }}
{{- end }}
{{- if not (kindIs "invalid" $fc.holdFeedbackInterval) }}
- --hold-feedback-interval
- {{ $fc.holdFeedbackInterval | toString | quote }}
{{- end }}
{{- end }}

{{/* The key of the keys file in its Secret; empty when there is no keys file. */}}
{{- define "llmsvc.apiKeysFileKey" -}}
{{- $keys := .Values.router.apiKeys -}}
{{- if $keys.enabled -}}
{{- if $keys.existingSecret -}}
{{- $keys.fileKey -}}
{{- else if $keys.tenants -}}
{{- default "keys.yaml" $keys.fileKey -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* Whether the router gets LLMSVC_API_KEYS (a comma list) from the Secret. */}}
{{- define "llmsvc.apiKeysList" -}}
{{- $keys := .Values.router.apiKeys -}}
{{- if $keys.enabled -}}
{{- if $keys.existingSecret -}}
{{- if not $keys.fileKey }}true{{ end -}}
{{- else if $keys.values }}true{{ end -}}
{{- end -}}
{{- end }}

{{/* Where the keys file is mounted in the router's container. */}}
{{- define "llmsvc.apiKeysFileDir" -}}/etc/llmsvc/api-keys{{- end }}

{{/* The YAML keys file of router.apiKeys.tenants, rpm and tpm divided among the routers. */}}
{{- define "llmsvc.apiKeysFile" -}}
{{- $root := . -}}
# Rendered by the llmsvc chart from router.apiKeys.tenants: rpm and tpm are each router's
# share of the fleet-wide figures (divided by {{ include "llmsvc.routerShares" . }} routers, rounded up).
keys:
{{- range .Values.router.apiKeys.tenants }}
  - name: {{ .name | toJson }}
    {{- if .key }}
    key: {{ .key | toJson }}
    {{- end }}
    {{- if .keySha256 }}
    key_sha256: {{ .keySha256 | toJson }}
    {{- end }}
    {{- with .maxPriority }}
    max_priority: {{ . | toJson }}
    {{- end }}
    {{- if .rpm }}
    rpm: {{ include "llmsvc.routerShare" (list $root .rpm) }}
    {{- end }}
    {{- if .tpm }}
    tpm: {{ include "llmsvc.routerShare" (list $root .tpm) }}
    {{- end }}
    {{- with .models }}
    models: {{ . | toJson }}
    {{- end }}
{{- end }}
{{- end }}
