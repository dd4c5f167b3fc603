{{/* Names, labels, images and the pod parts every llmsvc workload shares. */}}

{{- define "llmsvc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-llmsvc`, or the release name alone when it already contains the chart name. */}}
{{- define "llmsvc.fullname" -}}
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

{{/* Name of one component's objects: `<fullname>-<component>`. Call with (list $ "router"). */}}
{{- define "llmsvc.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "llmsvc.fullname" $root | trunc 50 | trimSuffix "-") (index . 1) }}
{{- end }}

{{- define "llmsvc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of everything; call with (list $ "router"). */}}
{{- define "llmsvc.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "llmsvc.chart" $root }}
{{ include "llmsvc.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: llmsvc
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component; call with (list $ "router"). */}}
{{- define "llmsvc.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "llmsvc.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Tag of the llmsvc images. */}}
{{- define "llmsvc.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Image of one component; call with (list $ "router"). The batch service runs the router
image (it holds the whole llmsvc package). */}}
{{- define "llmsvc.image" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $values := index $root.Values $component -}}
{{- $image := ternary "router" $component (eq $component "batch") -}}
{{- $repository := default (printf "%s/%s" $root.Values.image.prefix $image) $values.image.repository }}
{{- printf "%s:%s" $repository (default (include "llmsvc.tag" $root) $values.image.tag) }}
{{- end }}

{{/* ServiceAccount name of one component; call with (list $ "router"). */}}
{{- define "llmsvc.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
{{- if $values.serviceAccount.create }}
{{- default (include "llmsvc.componentName" .) $values.serviceAccount.name }}
{{- else }}
{{- default "default" $values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding the registry's write token. */}}
{{- define "llmsvc.registryTokenSecret" -}}
{{- include "llmsvc.tokenSecret" (list . "registry" "token") }}
{{- end }}

{{/* Secret holding a token; call with (list $ "registry" "token"), (list $ "registry"
"adminToken") or (list $ "router" "adminToken"): the user's existingSecret, else
`<component>-token` / `<component>-admin-token`. */}}
{{- define "llmsvc.tokenSecret" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $which := index . 2 -}}
{{- $token := index (index $root.Values $component) $which -}}
{{- $suffix := ternary "token" "admin-token" (eq $which "token") -}}
{{- default (printf "%s-%s" (include "llmsvc.componentName" (list $root $component)) $suffix) $token.existingSecret }}
{{- end }}

{{/* An env var from a token's Secret; call with (list $ "LLMSVC_TOKEN" "registry" "token"). */}}
{{- define "llmsvc.tokenEnv" -}}
{{- $root := index . 0 -}}
{{- $token := index (index $root.Values (index . 2)) (index . 3) -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "llmsvc.tokenSecret" (list $root (index . 2) (index . 3)) }}
      key: {{ $token.key }}
{{- end }}

{{/* Whether the router and the engine pods have the registry's write token: the chart's
registry with a token, or another registry whose token is in registry.token.existingSecret. */}}
{{- define "llmsvc.hasRegistryToken" -}}
{{- if and .Values.registry.token.enabled (or .Values.registry.enabled .Values.registry.token.existingSecret) }}true{{ end }}
{{- end }}

{{/* Whether the operator's builtin autoscaler asks this release's routers for GET /demand
with the router's admin token (mounted from its Secret). */}}
{{- define "llmsvc.autoscalerRouterToken" -}}
{{- if and (eq .Values.autoscaling.engine "builtin") .Values.router.enabled .Values.router.adminToken.enabled }}true{{ end }}
{{- end }}

{{/* Whether this release runs the batch service: it needs this release's router, which
forwards to it and carries its lines. */}}
{{- define "llmsvc.runsBatch" -}}
{{- if and .Values.batch.enabled .Values.router.enabled }}true{{ end }}
{{- end }}

{{/* "true" when the batch service takes the router's admin token as its --metrics-token
(both tokens on): Prometheus and the probes read /metrics and /health with it, and nothing
outside the router and the batch pod holds the batch token. */}}
{{- define "llmsvc.batchMetricsToken" -}}
{{- if and .Values.batch.token.enabled .Values.router.adminToken.enabled }}true{{ end }}
{{- end }}

{{/* Secret holding the router's API keys. */}}
{{- define "llmsvc.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "llmsvc.componentName" (list . "router"))) .Values.router.apiKeys.existingSecret }}
{{- end }}

{{/* `--all-namespaces`, or `--namespace a,b` when watchNamespaces is set. */}}
{{- define "llmsvc.namespaceArgs" -}}
{{- if .Values.watchNamespaces -}}
- --namespace
- {{ join "," .Values.watchNamespaces | quote }}
{{- else -}}
- --all-namespaces
{{- end }}
{{- end }}

{{/* Pod spec parts every component shares; call with (list $ "router"), or
(list $ "router" $volumes) to add volumes to the shared ones. */}}
{{- define "llmsvc.podCommon" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
serviceAccountName: {{ include "llmsvc.serviceAccountName" . }}
{{- /* Service links would put LLMSVC_PORT=tcp://… into the pods of a namespace with a
       Service named "llmsvc", and our settings read LLMSVC_* variables. */}}
enableServiceLinks: false
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 64Mi
{{- if gt (len .) 2 }}{{ with index . 2 }}
  {{- toYaml . | nindent 2 }}
{{- end }}{{ end }}
{{- end }}

{{/* Container parts every component shares: image, security, /tmp, probes on /health at the
named port `http`. Call with (list $ "router"), or (list $ "router" $volumeMounts) to add
mounts to the shared one. */}}
{{- define "llmsvc.containerCommon" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
image: {{ include "llmsvc.image" . }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml $values.resources | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- if gt (len .) 2 }}{{ with index . 2 }}
  {{- toYaml . | nindent 2 }}
{{- end }}{{ end }}
readinessProbe:
  httpGet: {path: /health, port: http}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /health, port: http}
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end }}

{{/* Environment every component gets, then the component's extraEnv; call with (list $ "router"). */}}
{{- define "llmsvc.envCommon" -}}
{{- $root := index . 0 -}}
{{- $values := index $root.Values (index . 1) -}}
- name: LLMSVC_LOG_FORMAT
  value: json
- name: LLMSVC_LOG_LEVEL
  value: {{ $values.logLevel | quote }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
