{{/* Chart name, overridable. */}}
{{- define "pixtral-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every object. The release name alone when it already contains the
chart name (the usual `helm install pixtral-operator ...`), so objects are not called
pixtral-operator-pixtral-operator.
*/}}
{{- define "pixtral-operator.fullname" -}}
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

{{- define "pixtral-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "pixtral-operator.labels" -}}
helm.sh/chart: {{ include "pixtral-operator.chart" . }}
{{ include "pixtral-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: pixtral-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator pods; immutable once installed (Deployment selector). */}}
{{- define "pixtral-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pixtral-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pixtral-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pixtral-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false (name an existing ServiceAccount)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pixtral-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
kopf peering name, or empty for a standalone operator. Several replicas without peering would
reconcile the same objects concurrently, so peering turns on by itself above one replica.
*/}}
{{- define "pixtral-operator.peeringName" -}}
{{- if .Values.peeringName }}
{{- .Values.peeringName }}
{{- else if gt (int .Values.replicaCount) 1 }}
{{- include "pixtral-operator.fullname" . }}
{{- end }}
{{- end }}

{{/*
The operator's permissions inside the namespaces it serves. Rendered into one ClusterRole when it
watches every namespace, or into a Role per namespace in watchNamespaces. Each verb is one the
operator's code or kopf uses (docs/install.md#permissions lists the call behind each rule);
children are written by server-side apply, which is `patch`, plus `create` for a new object.
The router rules (endpointslices, configmaps: get/list/watch) are held here because the operator
grants them to each PixtralDeployment's router ServiceAccount through a Role, and Kubernetes only
lets a subject grant permissions it holds itself (no `escalate`/`bind` needed). Secrets: `get` only,
to check that the referenced ones exist; the router gets its API keys from a Secret volume.
*/}}
{{- define "pixtral-operator.namespacedRules" -}}
- apiGroups: ["serving.pixtral.dev"]
  resources: ["pixtraldeployments"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["serving.pixtral.dev"]
  resources: ["pixtraldeployments/status"]
  verbs: ["patch"]
- apiGroups: ["serving.pixtral.dev"]
  resources: ["pixtraldeployments/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* Permissions on cluster-scoped objects: always a ClusterRole. */}}
{{- define "pixtral-operator.clusterRules" -}}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/* A label map as the operator's `key=value,key2=value2` setting (sorted by key, as range is). */}}
{{- define "pixtral-operator.labelList" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}
