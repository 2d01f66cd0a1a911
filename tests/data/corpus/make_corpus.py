"""Writes the labelled device corpus (dev.jsonl and heldout.jsonl) used by ``scanflow kb eval``.

Each record is one host as a scanner would see it: open ports, what each port said, and what a
person reading the vendor's documentation would call the device (vendor, model where the banner
states it, category). The banner shapes and model names below come from the vendors' public
manuals, datasheets and web-interface screenshots, written down by hand in this project's words;
nothing is copied from another fingerprint database. Generic embedded platforms (BusyBox, Boa,
GoAhead...) are labelled category "embedded" with no vendor. Records that only look like ordinary servers
(Apache, nginx, Postfix, OpenSSH on Linux...) are labelled vendor null: naming a vendor for them is
a wrong vendor.

Every fourth record goes to heldout.jsonl, kept apart to estimate how the rules
generalise (the rules were tuned on dev.jsonl only). Run ``python tests/data/corpus/make_corpus.py``
to rewrite both files; the output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def http(status="200 OK", server=None, realm=None, title=None, body="", extra=""):
    lines = [f"HTTP/1.1 {status}"]
    if server:
        lines.append(f"Server: {server}")
    lines.append("Date: Mon, 02 Dec 2019 10:00:00 GMT")
    if realm:
        lines.append(f'WWW-Authenticate: Basic realm="{realm}"')
    if extra:
        lines.append(extra)
    lines.append("Content-Type: text/html")
    page = ""
    if title is not None or body:
        page = "<html><head>" + (f"<title>{title}</title>" if title is not None else "") + f"</head><body>{body}</body></html>"
    return "\r\n".join(lines) + "\r\n\r\n" + page


def tls(cn, org=None, issuer=None, san="", inner=""):
    subject = f"CN={cn}" + (f", O={org}" if org else "")
    text = f"TLS TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256\nsubject: {subject}\nissuer: {issuer or subject}\n"
    if san:
        text += f"san: {san}\n"
    return text + ("\n" + inner if inner else "")


def rtsp(server):
    return f"RTSP/1.0 200 OK\r\nCSeq: 1\r\nServer: {server}\r\nPublic: OPTIONS, DESCRIBE, SETUP, PLAY\r\n\r\n"


def sip(agent):
    return f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1\r\nUser-Agent: {agent}\r\nCall-ID: 1@192.0.2.1\r\n\r\n"


def telnet(text):
    return "\xff\xfb\x01\xff\xfb\x03\xff\xfd\x18" + text


GROUPS: list[tuple[str, str, list]] = []  # (vendor, category, [(model or None, ports, banners)])


def group(vendor, category, hosts):
    GROUPS.append((vendor, category, hosts))


# -- cameras --------------------------------------------------------------------------------------
hik_ipc = ["DS-2CD2032-I", "DS-2CD2142FWD-I", "DS-2CD2385G1-I", "DS-2CD2T45FWD-I5", "DS-2CD2620F-IS",
           "DS-2CD2432F-IW", "DS-2DE4425IW-DE", "DS-2CD2047G2-L", "DS-2CD1023G0-I", "DS-2CD2H45FWD-IZS",
           "DS-2DF8836IX-AELW", "DS-2CD2522FWD-IS"]
group("Hikvision", "camera",
      [(m, [80, 554, 8000], {80: http("401 Unauthorized", "Hikvision-Webs", realm=m)}) for m in hik_ipc[:6]]
      + [(m, [443, 554, 8000], {443: tls(m, "Hikvision", san="IP:192.168.1.64")}) for m in hik_ipc[6:]]
      + [(None, [554, 8000], {554: rtsp("Hikvision-Webs")}), (None, [80, 8000], {80: http(server="App-webs/")}),
         (None, [80, 554], {80: http("401 Unauthorized", "Hikvision-Webs", realm="index.html")}),
         (None, [443], {443: tls("192.168.1.64", "Hikvision")})])
hik_nvr = ["DS-7608NI-K2", "DS-7216HQHI-K1", "DS-9632NI-I8", "DS-7732NI-K4", "DS-7104HGHI-F1", "DS-7616NI-E2/16P",
           "DS-7208HUHI-K2", "DS-9664NI-I8"]
group("Hikvision", "dvr",
      [(m, [80, 554, 8000], {80: http("401 Unauthorized", "DNVRS-Webs", realm=m)}) for m in hik_nvr[:5]]
      + [(m, [443, 8000], {443: tls(m, "Hikvision")}) for m in hik_nvr[5:]]
      + [(None, [80, 8000], {80: http(server="DVRDVS-Webs")}), (None, [80], {80: http(server="DNVRS-Webs")})])
dahua_ipc = ["IPC-HFW1320S", "IPC-HDW4431C-A", "IPC-HDBW2431E-S", "IPC-HFW2431S-S-S2", "IPC-HDW1230S",
             "IPC-HFW5241E-ZE", "DH-IPC-HFW4431R-Z", "DH-IPC-HDBW4631R-ZS", "SD59225U-HNI", "IPC-EW5531-AS",
             "IPC-HFW1230S", "IPC-HDW2831T-AS-S2"]
group("Dahua", "camera",
      [(m, [443, 37777], {443: tls(m, "Dahua", san="DNS:ipc.local, IP:192.168.1.108")}) for m in dahua_ipc[:6]]
      + [(m, [80, 554, 37777], {80: http("401 Unauthorized", realm=m)}) for m in dahua_ipc[6:]]
      + [(None, [554, 37777], {554: rtsp("Dahua Rtsp Server")}), (None, [554], {554: rtsp("Dahua Rtsp Server")}),
         (None, [443, 37777], {443: tls("IPC", "Dahua")})])
dahua_nvr = ["NVR4208-8P-4KS2", "XVR5108HS-X", "NVR2104HS-P-4KS2", "HCVR5108H-S3", "DHI-NVR4416-16P-4KS2",
             "XVR4116HS-X", "NVR5216-16P-4KS2E"]
group("Dahua", "dvr",
      [(m, [80, 554, 37777], {80: http("401 Unauthorized", realm=m)}) for m in dahua_nvr[:4]]
      + [(m, [443, 37777], {443: tls(m, "Dahua")}) for m in dahua_nvr[4:]])
axis = ["M1065-L", "P1435-LE", "Q6155-E", "M3045-V", "P3225-LV", "M2026-LE", "Q1615", "P1365", "M1125", "241Q"]
group("Axis", "camera",
      [(m, [21, 80, 554], {21: f"220 AXIS {m} Network Camera 8.40.1 (2019) ready.\r\n"}) for m in axis[:6]]
      + [(m, [80, 554], {80: http(title=f"AXIS {m} Network Camera")}) for m in axis[6:9]]
      + [(m, [21], {21: f"220 AXIS {m} Video Server 4.47 (Jan 14 2010) ready.\r\n"}) for m in axis[9:]]
      + [(None, [80, 443], {80: http("401 Unauthorized", realm="AXIS_ACCC8E5A1B2C")}),
         (None, [443], {443: tls("axis-accc8e0f1e2d", "Axis Communications AB")})])
group("D-Link", "camera",
      [(m, [80], {80: http("401 Unauthorized", "Boa/0.94.14rc21", realm=m)})
       for m in ["DCS-932L", "DCS-930L", "DCS-942L", "DCS-5020L", "DCS-933L", "DCS-2130", "DCS-8000LH", "DCS-936L"]]
      + [(None, [80, 443], {80: http(server="dcs-lig-httpd")})])
group("Foscam", "camera",
      [(m, [88], {88: http(title=m)}) for m in ["FI9821P", "FI9805W", "FI9900P", "FI9816P"]]
      + [(None, [88, 443], {88: http(title="IPCam Client")}), (None, [80], {80: http(title="IPCam Client")})])
group("Sony", "camera",
      [(m, [80, 554], {80: http("401 Unauthorized", realm=f"Sony Network Camera {m}")})
       for m in ["SNC-EP580", "SNC-CH110", "SNC-VB600", "SNC-DH120"]])
group("Vivotek", "camera",
      [(m, [80, 554], {80: http("401 Unauthorized", "Boa/0.94.14rc21", realm=m)}) for m in ["FD8169A", "IB8369A", "FD9388-HTV"]]
      + [(None, [554], {554: rtsp("Vivotek Streaming Server")})])
group("Amcrest", "camera",
      [(m, [443, 37777], {443: tls(m, "Amcrest")}) for m in ["IP2M-841B", "IP4M-1041B", "IP8M-2496EB"]])
group("Hanwha", "camera",
      [(m, [80, 554, 4520], {80: http("401 Unauthorized", realm=f"iPolis_{m}")}) for m in ["XND-6080", "QNV-7080R", "SNO-6084R", "XNP-6320H"]])
group("Bosch", "camera",
      [(m, [80, 554, 1756], {80: http(title=f"{m} - Bosch")}) for m in ["FLEXIDOME IP 4000i", "DINION IP 5000 HD", "AUTODOME IP 5000i"]]
      + [(None, [80, 1756], {80: http(server="VCS-VideoJet-Webserver")})])
group("GeoVision", "camera",
      [(m, [80], {80: http(server="GeoHttpServer", title=m)}) for m in ["GV-BX1500", "GV-FD2500", "GV-EBL2100"]])
group("Mobotix", "camera",
      [(None, [80], {80: http("401 Unauthorized", realm="MOBOTIX Camera User")}),
       ("M16", [80], {80: http(title="M16 MOBOTIX Camera")})])
group("EZVIZ", "camera",
      [(m, [80, 554, 8000], {80: http("401 Unauthorized", realm=m)}) for m in ["CS-C6N-A0-1C2WFR", "CS-CV246-A0-1C2WFR"]])
group("TP-Link", "camera",
      [(m, [80, 2020], {80: http(title=m)}) for m in ["Tapo C200", "Tapo C310", "NC200"]])
group("Uniview", "camera",
      [(m, [80, 554], {80: http("401 Unauthorized", realm=m)}) for m in ["IPC322LR3-VSPF28-D", "IPC2124LR3-PF40M-D"]])
group("Milesight", "camera",
      [(m, [80, 554], {80: http("401 Unauthorized", realm=m)}) for m in ["MS-C2963-PB", "MS-C5364-PD"]])
group("Netwave", "camera", [(None, [80], {80: http(server="Netwave IP Camera")}), (None, [81], {81: http(server="Netwave IP Camera")})])
group("AVTECH", "camera", [(None, [80], {80: http(server="Linux/2.x UPnP/1.0 Avtech/1.0", title="::: Login :::")}),
                           (None, [88], {88: http(server="Linux/2.x UPnP/1.0 Avtech/1.0")})])
group("Reolink", "camera", [(None, [80, 9000], {80: http(title="Reolink")}), (None, [443, 9000], {443: tls("Reolink", "Reolink")})])
group("Ubiquiti", "camera", [(None, [7080, 7443, 7447], {7080: http(title="UniFi Video")})])
# -- DVR / NVR ------------------------------------------------------------------------------------
group("Xiongmai", "dvr", [(None, [80, 34567], {80: http(server="uc-httpd 1.0.0", title="NETSurveillance WEB")}),
                          (None, [80, 9527, 34567], {80: http(server="uc-httpd 1.0.0")}),
                          (None, [23, 80, 34567], {80: http(title="NETSurveillance WEB"), 23: telnet("\r\nLocalHost login: ")})])
group("TVT", "dvr", [(None, [80], {80: http(server="Cross Web Server")}), ("TD-2704AS-PL", [80], {80: http(server="Cross Web Server", title="TD-2704AS-PL")})])
group("LILIN", "dvr", [(None, [80], {80: http("401 Unauthorized", "Merit LILIN Ent. Co., Ltd.", realm="Merit LILIN")})])
group("Vacron", "dvr", [(None, [80], {80: http(title="VACRON NVR LOGIN")})])
# -- routers ----------------------------------------------------------------------------------------
group("TP-Link", "router",
      [(m, [80], {80: http("401 Unauthorized", realm=f"TP-LINK Wireless N Router {m}")}) for m in ["WR841N", "WR740N", "WR940N", "WR840N"]]
      + [(m, [80], {80: http(title=f"TP-LINK Wireless Router {m}")}) for m in ["Archer C7", "Archer C50", "TL-WR1043ND"]])
group("D-Link", "router",
      [(m, [80], {80: http("401 Unauthorized", realm=m)}) for m in ["DIR-615", "DIR-300", "DSL-2750U", "DIR-600", "DSL-2640B"]]
      + [(m, [80, 8080], {80: http(server=f"Linux, HTTP/1.1, {m} Ver 1.14")}) for m in ["DIR-850L", "DIR-860L", "DIR-880L"]])
group("Netgear", "router",
      [(m, [80], {80: http("401 Unauthorized", realm=f"NETGEAR {m}")}) for m in ["R7000", "R6400", "DGN2200v3", "WNR2000v5", "R8000", "WNR1000v2"]]
      + [(None, [443], {443: tls("www.routerlogin.net", "NETGEAR")})])
group("ASUS", "router",
      [(m, [80], {80: http(title=f"ASUS Wireless Router {m} - Login")}) for m in ["RT-AC68U", "RT-N12", "RT-AC66U", "RT-AX88U"]]
      + [(None, [8443], {8443: tls("router.asus.com")})])
group("Huawei", "router",
      [(m, [80, 37215], {80: http("401 Unauthorized", realm=m)}) for m in ["HG532e", "HG532s"]]
      + [(m, [80, 7547], {80: http(title=f"EchoLife {m}")}) for m in ["HG8245H", "HG8546M", "EG8145V5"]]
      + [(None, [23], {23: telnet("Welcome Visiting Huawei Home Gateway\r\nCopyright by Huawei Technologies Co., Ltd.\r\nLogin:")})])
group("ZTE", "router",
      [(m, [80], {80: http("401 Unauthorized", realm=m)}) for m in ["ZXHN H108N", "ZXHN H298A"]]
      + [(None, [80, 7547], {80: http(server="Mini web server 1.0 ZTE corp 2005.")})])
group("Zyxel", "router",
      [(m, [80], {80: http(title=f"ZyXEL {m}")}) for m in ["VMG1312-B10D", "P-660HN-T1A", "NBG6515"]]
      + [(None, [80, 7547], {80: http(server="ZyXEL-RomPager/3.02")}), (None, [23], {23: telnet("ZyNOS Password: ")})])
group("MikroTik", "router",
      [(None, [21, 8291], {21: "220 MikroTik FTP server (MikroTik 6.45.9) ready\r\n"}),
       (None, [22, 8291], {22: "SSH-2.0-ROSSSH\r\n"}), (None, [80, 8291], {80: http(title="RouterOS router configuration page")}),
       (None, [23, 8291], {23: telnet("MikroTik v6.48.6 (long-term)\r\nLogin: ")})])
group("AVM", "router",
      [(m, [80, 49000], {80: http(title=f"FRITZ!Box {m}")}) for m in ["7590", "7490", "7530"]]
      + [(None, [443], {443: tls("myfritz.fritz.box")})])
group("DrayTek", "router",
      [(m, [80], {80: http(server=f"DrayTek/Vigor{m} UPnP/1.0 miniupnpd/1.0")}) for m in ["2860", "2960", "2925"]])
group("NEC", "router", [(m, [80], {80: http("401 Unauthorized", realm=f"Aterm {m}")}) for m in ["WG1200HP", "WG2600HP3", "WF1200CR"]])
group("Buffalo", "router", [(None, [80], {80: http("401 Unauthorized", realm="AirStation WHR-G301N")})])
group("Yamaha", "router", [(m, [80], {80: http("401 Unauthorized", realm=m)}) for m in ["RTX1210", "RTX830", "NVR510"]])
group("Technicolor", "router", [("TG789vac", [80], {80: http("401 Unauthorized", realm="Technicolor TG789vac v2")})])
group("Linksys", "router", [(m, [80], {80: http("401 Unauthorized", realm=m)}) for m in ["WRT54GL", "E1200", "EA6350"]])
group("Ubiquiti", "router", [(None, [443], {443: tls("UbiquitiRouterUI", "Ubiquiti Inc.")}), (None, [80], {80: http(title="EdgeOS")})])
group("Cisco", "router", [(None, [22], {22: "SSH-1.99-Cisco-1.25\r\n"}), (None, [80], {80: http("401 Unauthorized", "cisco-IOS", realm="level_15_access")})])
group("Tenda", "router", [(None, [80], {80: http(title="Tenda | Login")})])
group("DASAN Zhone", "router", [(None, [80, 8080], {80: http(title="GPON Home Gateway")})])
group("FiberHome", "router", [("AN5506-04-F", [80], {80: http("401 Unauthorized", realm="AN5506-04-F")})])
# -- NAS ------------------------------------------------------------------------------------------
group("Synology", "nas",
      [(None, [5000, 5001], {5000: http(title="Synology DiskStation")}), (None, [5001], {5001: tls("synology", "Synology Inc.")})]
      + [(m, [21, 5000], {21: f"220 Synology {m} FTP server ready.\r\n"}) for m in ["DS218j", "DS918+", "RS819"]])
group("QNAP", "nas", [(None, [8080], {8080: http(title="QNAP Turbo NAS")}), (None, [443, 8080], {443: tls("QNAP NAS", "QNAP Systems Inc.")}),
                      (None, [21], {21: "220 NASFTPD Turbo station 1.3.5a Server (ProFTPD)\r\n"})])
group("Western Digital", "nas", [(m, [80], {80: http(title=f"My Cloud {m}")}) for m in ["EX2 Ultra", "PR4100"]])
group("Buffalo", "nas", [(m, [80], {80: http(title=f"LinkStation {m}")}) for m in ["LS220D", "LS510D"]])
group("ASUSTOR", "nas", [(m, [8000], {8000: http(title=f"ASUSTOR {m}")}) for m in ["AS5304T", "AS1002T"]])
group("Zyxel", "nas", [(m, [80], {80: http(title=f"ZyXEL {m}")}) for m in ["NSA325", "NAS326"]])
# -- printers -------------------------------------------------------------------------------------
hp = ["LaserJet Pro MFP M426fdn", "Color LaserJet MFP M477fdw", "OfficeJet Pro 8710", "LaserJet M402dn",
      "PageWide Pro 477dw", "LaserJet Pro M404n"]
group("HP", "printer",
      [(m, [80, 9100], {80: http(server=f"HP HTTP Server; HP {m} - F6W14A; Serial Number: PHBLK12345")}) for m in hp[:4]]
      + [(m, [80, 9100], {80: http(title=f"HP {m}")}) for m in hp[4:]]
      + [(None, [21, 9100], {21: "220 JD FTP Server Ready\r\n"})])
group("Brother", "printer",
      [(m, [80, 9100], {80: http(server="debut/1.20", title=f"Brother {m} series")}) for m in ["MFC-L2700DW", "HL-L2340D", "DCP-L2540DW"]])
group("Canon", "printer", [(None, [80, 9100], {80: http(server="CANON HTTP Server")}), (None, [80], {80: http(title="Remote UI: Login")})])
group("Epson", "printer", [(m, [80, 9100], {80: http(server="EPSON_Linux UPnP/1.0 Epson UPnP SDK/1.0", title=f"EPSON {m} Series")}) for m in ["WF-3720", "ET-4750"]])
group("Xerox", "printer", [(m, [80, 9100], {80: http(title=f"Xerox {m}")}) for m in ["WorkCentre 6515", "VersaLink C405"]])
group("Ricoh", "printer", [(m, [21, 9100], {21: f"220 RICOH {m} FTP server (12.67) ready.\r\n"}) for m in ["MP C3003", "Aficio MP 2852"]])
group("Kyocera", "printer", [(m, [80, 9100], {80: http(server="KM-MFP-http/V0.0.1", title=m)}) for m in ["ECOSYS M2540dn", "TASKalfa 3252ci"]])
group("Konica Minolta", "printer", [(m, [80, 9100], {80: http(title=f"KONICA MINOLTA {m}")}) for m in ["bizhub C258", "bizhub 554e"]])
group("Lexmark", "printer", [(m, [80, 9100], {80: http(title=f"Lexmark {m}")}) for m in ["MS610de", "CX417de"]])
# -- VoIP -----------------------------------------------------------------------------------------
group("Grandstream", "voip", [(m, [5060], {5060: sip(f"Grandstream {m} 1.0.11.3")}) for m in ["GXP2170", "GXP1625", "HT802"]])
group("Yealink", "voip", [(m, [5060], {5060: sip(f"Yealink SIP-{m} 66.85.0.5")}) for m in ["T46S", "T21P", "T54W"]])
group("Cisco", "voip", [(m, [5060], {5060: sip(f"Cisco/{m}-1.4.1(SR1)")}) for m in ["SPA112", "SPA504G"]])
group("snom", "voip", [(m, [5060], {5060: sip(f"{m}/10.1.46.16")}) for m in ["snom760", "snom720"]])
group("Polycom", "voip", [("VVX_411", [5060], {5060: sip("PolycomVVX-VVX_411-UA/5.9.0.9373")})])
# -- media, smart home, ICS, building ---------------------------------------------------------------
group("Roku", "media", [(None, [8060], {8060: http(server="Roku/9.4.0 UPnP/1.0 Roku/9.4.0")})])
group("Sonos", "media", [(None, [1400], {1400: http(server="Linux UPnP/1.0 Sonos/57.3-77280 (ZPS9)")})])
group("Apple", "media", [(None, [7000], {7000: http(server="AirTunes/366.0")}), (None, [7000], {7000: rtsp("AirTunes/220.68")})])
group("Plex", "media", [(None, [32400], {32400: tls("*.0123456789abcdef0123456789abcdef.plex.direct")})])
group("Signify", "smarthome", [(None, [80], {80: http(server="Linux/3.14.0 UPnP/1.0 IpBridge/1.26.0", title="hue personal wireless lighting")})])
group("Home Assistant", "smarthome", [(None, [8123], {8123: http(title="Home Assistant")})])
group("Siemens", "ics", [(m, [80, 102], {80: http(title=f"SIMATIC {m} Web Server")}) for m in ["S7-1200", "S7-1500"]])
group("Moxa", "ics", [(m, [23, 4001], {23: telnet(f"Model name       : {m}\r\nMAC address      : 00:90:E8:00:00:01\r\n")}) for m in ["NPort 5110", "NPort 5610-8"]])
group("Tridium", "building", [(None, [80, 1911], {80: http(server="Niagara Web Server/3.8.38")})])
group("Crestron", "building", [(m, [23, 41794], {23: telnet(f"\r\n{m} Control Console\r\n{m}>")}) for m in ["CP3", "MC3"]])
# -- generic embedded -------------------------------------------------------------------------------
group(None, "embedded",
      [(None, [23], {23: telnet("\r\n\r\nBusyBox v1.19.4 built-in shell (ash)\r\n(none) login: ")}),
       (None, [23], {23: telnet("\r\n(none) login: ")}),
       (None, [23], {23: telnet("\r\nBusyBox v1.22.1 (2017-06-13 14:55:58 CST) built-in shell (ash)\r\n")}),
       (None, [23], {23: "\r\nOpenWrt login: "})])
group(None, "embedded", [(None, [80], {80: http(server="Boa/0.94.14rc21")}), (None, [80], {80: http(server="Boa/0.94.13")})])
group(None, "embedded", [(None, [80], {80: http(server="GoAhead-Webs")}), (None, [81], {81: http("401 Unauthorized", "GoAhead-Webs", realm="GoAhead")})])
group(None, "embedded", [(None, [80], {80: http(server="thttpd/2.25b 29dec2003")})])
group(None, "embedded", [(None, [80], {80: http(server="mini_httpd/1.19 19dec2003")})])
# -- ordinary servers (no IoT vendor to name) --------------------------------------------------------
group(None, None,
      [(None, [80], {80: http(server="Apache/2.4.6 (CentOS)", title="Welcome")}),
       (None, [80, 443], {80: http(server="nginx/1.14.0", title="Welcome to nginx!")}),
       (None, [80], {80: http(server="Microsoft-IIS/10.0", title="IIS Windows Server")}),
       (None, [25], {25: "220 mail.example.jp ESMTP Postfix\r\n"}),
       (None, [22], {22: "SSH-2.0-OpenSSH_7.4\r\n"}),
       (None, [22], {22: "SSH-2.0-OpenSSH_8.2p1 Ubuntu-4ubuntu0.5\r\n"}),
       (None, [21], {21: "220 (vsFTPd 3.0.2)\r\n"}),
       (None, [21], {21: "220 ProFTPD 1.3.5 Server (Debian) [192.0.2.10]\r\n"}),
       (None, [443], {443: tls("www.example.jp", "Example K.K.", issuer="CN=R3, O=Let's Encrypt", inner=http(server="nginx"))}),
       (None, [80], {80: http(server="lighttpd/1.4.45")}),
       (None, [22], {22: "SSH-2.0-dropbear_2017.75\r\n"}),
       (None, [8080], {8080: http(server="Apache-Coyote/1.1", title="Apache Tomcat/8.5.32")}),
       (None, [110], {110: "+OK Dovecot ready.\r\n"}),
       (None, [3306], {}),
       (None, [80], {80: http(server="Apache", title="Test Page for the Apache HTTP Server")}),
       (None, [443], {443: tls("localhost")}),
       (None, [23], {23: telnet("\r\nUser Access Verification\r\n\r\nUsername: ")}),
       (None, [80], {80: http("401 Unauthorized", "nginx", realm="Restricted")}),
       (None, [8443], {8443: tls("*.example.ne.jp", "Example Inc.")}),
       (None, [25], {25: "220 mx.example.co.jp ESMTP Exim 4.92\r\n"})])


def records():
    dev, held = [], []
    n = 0
    for vendor, category, hosts in GROUPS:
        for i, (model, ports, banners) in enumerate(hosts):
            n += 1
            rec = {"ip": f"198.18.{n // 256}.{n % 256}", "ports": sorted(set(ports) | set(banners)),
                   "banners": {str(p): b for p, b in sorted(banners.items())},
                   "expect": {"vendor": vendor, "model": model, "category": category}}
            (held if n % 4 == 0 else dev).append(rec)
    return dev, held


if __name__ == "__main__":
    dev, held = records()
    for name, recs in (("dev.jsonl", dev), ("heldout.jsonl", held)):
        with open(HERE / name, "w", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=True) + "\n")
    print(f"dev {len(dev)}, held-out {len(held)}")
