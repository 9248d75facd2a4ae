{{/* Names, labels and checks shared by the templates. */}}

{{- define "aiguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name, plus the chart name unless the
release name already contains it ("aiguard" → "aiguard", "prod" → "prod-aiguard"). */}}
{{- define "aiguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "aiguard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aiguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "aiguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aiguard
{{- end -}}

{{- define "aiguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aiguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "aiguard.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "aiguard.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "aiguard.operatorImage" -}}
{{- $img := .Values.operator.image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "aiguard.sidecarImage" -}}
{{- printf "%s:%s" .Values.sidecar.image.repository (default .Chart.AppVersion .Values.sidecar.image.tag) -}}
{{- end -}}

{{- define "aiguard.webhookService" -}}{{ include "aiguard.fullname" . }}-webhook{{- end -}}
{{- define "aiguard.collectorService" -}}{{ include "aiguard.fullname" . }}-collector{{- end -}}
{{- define "aiguard.certSecret" -}}{{ include "aiguard.fullname" . }}-webhook-tls{{- end -}}
{{/* Operator mode: the generated CA and certificate, shared by every replica and kept across
restarts (AIGUARD_WEBHOOK_CERT_SECRET, operator/aiguard_operator/certsync.py). */}}
{{- define "aiguard.sharedCertSecret" -}}{{ include "aiguard.fullname" . }}-webhook-certs{{- end -}}
{{- define "aiguard.captureKeySecret" -}}{{ include "aiguard.fullname" . }}-capture-key{{- end -}}

{{/* The managed name kopf gives its webhook configurations (AIGUARD_WEBHOOK_MANAGED); the
RBAC rule of docs/operator-rbac.md names it. */}}
{{- define "aiguard.managedWebhookName" -}}aiguard.dev{{- end -}}

{{/* DNS names of the webhook and collector Services: the SANs of the serving certificate. */}}
{{- define "aiguard.certHosts" -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list -}}
{{- range $svc := list (include "aiguard.webhookService" .) (include "aiguard.collectorService" .) -}}
{{- $hosts = append $hosts (printf "%s.%s.svc" $svc $ns) -}}
{{- $hosts = append $hosts (printf "%s.%s.svc.cluster.local" $svc $ns) -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/* Namespaces the webhooks never see: the system ones, the release's, and the configured. */}}
{{- define "aiguard.excludedNamespaces" -}}
{{- $ns := concat (list "kube-node-lease" "kube-public" "kube-system" .Release.Namespace) .Values.webhook.excludeNamespaces -}}
{{- toJson (sortAlpha (uniq $ns)) -}}
{{- end -}}

{{/* Where the webhook certificates are mounted, and the collector's (the same files). */}}
{{- define "aiguard.certDir" -}}/var/run/aiguard/webhook-certs{{- end -}}

{{/* Combinations that cannot work, refused with a message that says what to change. */}}
{{- define "aiguard.validate" -}}
{{- $v := .Values -}}
{{- if and (gt (int $v.operator.replicaCount) 1) (eq $v.operator.peering "standalone") -}}
{{- fail "operator.replicaCount > 1 needs kopf peering: set operator.peering to a name (e.g. aiguard), not standalone" -}}
{{- end -}}
{{- if and $v.collector.enabled (gt (int $v.operator.replicaCount) 1) (not $v.collector.postgres.enabled) -}}
{{- fail "operator.replicaCount > 1 with the collector needs collector.postgres.enabled=true: the SQLite store on a ReadWriteOnce volume serves one pod" -}}
{{- end -}}
{{- if and $v.collector.postgres.enabled (not $v.collector.postgres.existingSecret) -}}
{{- fail "collector.postgres.enabled=true needs collector.postgres.existingSecret: the Secret holding the PostgreSQL DSN" -}}
{{- end -}}
{{- end -}}
