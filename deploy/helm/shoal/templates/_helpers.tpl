{{/* Names, labels and the pieces every workload shares. */}}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "origin"). */}}
{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shoal.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "shoal.helperImage" -}}
{{ .Values.helperImage.repository }}:{{ .Values.helperImage.tag }}
{{- end -}}

{{/* The origins' headless Service, which gives every StatefulSet pod a stable DNS name. */}}
{{- define "shoal.originHeadless" -}}
{{ include "shoal.fullname" . }}-origins
{{- end -}}

{{/* The headless Service over the agent DaemonSet that the proxy preheats into; rendered only
     when preheating into agents is on. */}}
{{- define "shoal.agentHeadless" -}}
{{ include "shoal.fullname" . }}-agents
{{- end -}}

{{- define "shoal.preheatAgents" -}}
{{- $agents := .Values.proxy.preheat.agents -}}
{{- if or (gt (int $agents.count) 0) (gt (float64 $agents.share) 0.0) -}}true{{- end -}}
{{- end -}}

{{/* The origins' host names, one per replica: "<pod>.<headless service>", which every pod of
     the namespace resolves through its DNS search path. Kept short on purpose: the tracker uses
     an origin's peer address as its peer id, which is at most 64 characters. */}}
{{- define "shoal.originHosts" -}}
{{- $root := . -}}
{{- $hosts := list -}}
{{- range $i := until (int .Values.origin.replicas) -}}
{{- $host := printf "%s-origin-%d.%s" (include "shoal.fullname" $root) $i (include "shoal.originHeadless" $root) -}}
{{- if gt (len (printf "%s:15101" $host)) 64 -}}
{{- fail (printf "origin address %s:15101 is longer than a peer id may be (64): set fullnameOverride to a shorter name" $host) -}}
{{- end -}}
{{- $hosts = append $hosts $host -}}
{{- end -}}
{{- toJson $hosts -}}
{{- end -}}

{{/* How internal HTTP addresses are written: "https://" with mutual TLS, else bare host:port. */}}
{{- define "shoal.httpScheme" -}}
{{- if .Values.mtls.enabled -}}https://{{- end -}}
{{- end -}}

{{/* `origins:` of proxy and build-index, wrapped as {"origins": …} JSON: the static list, or DNS
     over the headless Service. */}}
{{- define "shoal.originMembers" -}}
{{- if eq .Values.membership.mode "dns" -}}
{{- $dns := dict "name" (printf "%s.%s.svc.%s" (include "shoal.originHeadless" .) .Release.Namespace .Values.clusterDomain) "port" 15100 "interval" .Values.membership.dnsInterval -}}
{{- if .Values.mtls.enabled -}}
{{- $_ := set $dns "scheme" "https" -}}
{{- end -}}
{{- dict "origins" (dict "dns" $dns) | toJson -}}
{{- else if eq .Values.membership.mode "static" -}}
{{- $list := list -}}
{{- range (include "shoal.originHosts" . | fromJsonArray) -}}
{{- $list = append $list (printf "%s%s:15100" (include "shoal.httpScheme" $) .) -}}
{{- end -}}
{{- dict "origins" $list | toJson -}}
{{- else -}}
{{- fail (printf "membership.mode must be static or dns, not %q" .Values.membership.mode) -}}
{{- end -}}
{{- end -}}

{{/* Pod annotations: Prometheus scraping on the component's HTTP port (over HTTPS when "https"),
     and a config checksum so that a changed ConfigMap rolls the pods.
     (dict "root" $ "port" 15100 "config" "<text>" "https" true) */}}
{{- define "shoal.podAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .https }}
prometheus.io/scheme: https
{{- end }}
{{ end -}}
checksum/config: {{ .config | sha256sum }}
{{- end -}}

{{/* Environment every Shoal container gets. */}}
{{- define "shoal.env" -}}
- name: RUST_LOG
  value: {{ .Values.rustLog | quote }}
{{- if .Values.tls.caSecret.enabled }}
- name: SSL_CERT_FILE
  value: /etc/shoal/ca/{{ .Values.tls.caSecret.key }}
{{- end }}
{{- end -}}

{{/* The CA bundle's volume and mount, when tls.caSecret.enabled. */}}
{{- define "shoal.tlsVolumeMounts" -}}
- name: ca
  mountPath: /etc/shoal/ca
  readOnly: true
{{- end -}}

{{- define "shoal.tlsVolumes" -}}
- name: ca
  secret:
    secretName: {{ .Values.tls.caSecret.name }}
    items:
      - key: {{ .Values.tls.caSecret.key }}
        path: {{ .Values.tls.caSecret.key }}
{{- end -}}

{{/* Liveness on GET /livez of the named container port; readiness on GET /health, or on the
     component's own readiness path (`ready`: the agent's /readyz, which fails while its tracker
     or build-index does not answer). */}}
{{- define "shoal.probes" -}}
{{- $port := . -}}
{{- $scheme := "HTTP" -}}
{{- $ready := "/health" -}}
{{- if kindIs "map" . -}}
{{- $port = .port -}}
{{- $scheme = .scheme | default "HTTP" -}}
{{- $ready = .ready | default "/health" -}}
{{- end -}}
livenessProbe:
  httpGet: {path: /livez, port: {{ $port }}, scheme: {{ $scheme }}}
  initialDelaySeconds: 5
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet: {path: {{ $ready }}, port: {{ $port }}, scheme: {{ $scheme }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* The agent's registry endpoint as the node's container runtime reaches it. */}}
{{- define "shoal.agentEndpoint" -}}
{{- if .Values.agent.hostNetwork -}}
http://127.0.0.1:{{ .Values.agent.registryPort }}
{{- else -}}
http://__NODE_IP__:{{ .Values.agent.hostPort }}
{{- end -}}
{{- end -}}


{{/* Mutual TLS. Components by their values key; the role is what their certificate names. */}}
{{- define "shoal.mtlsComponents" -}}
{{- toJson (dict "origin" "origin" "buildIndex" "build-index" "tracker" "tracker" "proxy" "proxy" "agent" "agent") -}}
{{- end -}}

{{/* The Secret holding a component's certificate: (dict "root" $ "component" "buildIndex"). */}}
{{- define "shoal.mtlsSecret" -}}
{{- $role := get (include "shoal.mtlsComponents" .root | fromJson) .component -}}
{{- get .root.Values.mtls.existingSecrets .component | default (printf "%s-%s-mtls" (include "shoal.fullname" .root) $role) -}}
{{- end -}}

{{/* What mutual TLS needs from the values; called by every template that renders it. */}}
{{- define "shoal.mtlsValidate" -}}
{{- if .Values.mtls.enabled -}}
{{- if .Values.proxy.tls.enabled -}}
{{- fail "mtls.enabled and proxy.tls.enabled: with mutual TLS the proxy serves its mTLS certificate on its public port too (one tls section); turn proxy.tls off and put the proxy's public names in mtls.certManager.proxyDnsNames, or bring that certificate as mtls.existingSecrets.proxy" -}}
{{- end -}}
{{- range $component, $role := include "shoal.mtlsComponents" . | fromJson -}}
{{- if and (not (get $.Values.mtls.existingSecrets $component)) (not $.Values.mtls.certManager.issuerRef.name) -}}
{{- fail (printf "mtls.enabled: set mtls.existingSecrets.%s or mtls.certManager.issuerRef.name" $component) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's `tls:` section with mutual TLS, as JSON: the Secret's files where
     shoal.mtlsVolumeMounts puts them. */}}
{{- define "shoal.mtlsConfig" -}}
{{- $tls := dict "cert" "/etc/shoal/mtls/tls.crt" "key" "/etc/shoal/mtls/tls.key" "ca" "/etc/shoal/mtls/ca.crt" -}}
{{- with .Values.mtls.identities -}}
{{- $_ := set $tls "identities" . -}}
{{- end -}}
{{- toJson $tls -}}
{{- end -}}

{{/* The certificate's volume and mount, when mtls.enabled. The whole Secret is mounted (no
     items, no subPath), so the kubelet updates the files on renewal and the component reloads
     them. (dict "root" $ "component" "origin") */}}
{{- define "shoal.mtlsVolumeMounts" -}}
- {name: mtls, mountPath: /etc/shoal/mtls, readOnly: true}
{{- end -}}

{{- define "shoal.mtlsVolumes" -}}
- name: mtls
  secret:
    secretName: {{ include "shoal.mtlsSecret" . }}
{{- end -}}
